"""Which table sets may be merged: the three adjacency modes.

A selection is a set of tables; ``table_adjacencies`` gives undirected edges
between tables. Only edges between two selected tables count (the induced
subgraph); self-loops never count. A single table satisfies every mode.

- ``connected`` (the default): the selection forms one connected group.
- ``pairwise``: every two selected tables are adjacent (a clique).
- ``neighbors``: every selected table is adjacent to at least one other
  selected table (what ``assign_tables_atomic_v2`` enforces with
  ``p_require_adjacency``; two separate pairs pass).

pairwise implies connected, and connected implies neighbors for two or more
tables, so the database's own adjacency check is a backstop for every mode.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

T = TypeVar("T", bound=Hashable)

CONNECTED, PAIRWISE, NEIGHBORS = "connected", "pairwise", "neighbors"
MODES = (CONNECTED, PAIRWISE, NEIGHBORS)
DEFAULT_MODE = CONNECTED


class UnknownMode(ValueError):
    """Not one of MODES."""

    def __init__(self, mode: object) -> None:
        super().__init__(f"unknown adjacency mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode


def check_mode(mode: str) -> str:
    """``mode`` itself when it is one of MODES; else UnknownMode."""
    if mode not in MODES:
        raise UnknownMode(mode)
    return mode


def _neighbours(tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> dict[T, set[T]]:
    """Adjacency lists of the subgraph induced by ``tables`` (undirected, without self-loops)."""
    graph: dict[T, set[T]] = {table: set() for table in tables}
    if not graph:
        raise ValueError("a selection needs at least one table")
    for a, b in edges:
        if a != b and a in graph and b in graph:
            graph[a].add(b)
            graph[b].add(a)
    return graph


def is_connected(tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> bool:
    graph = _neighbours(tables, edges)
    start = next(iter(graph))
    seen, frontier = {start}, [start]
    while frontier:
        for other in graph[frontier.pop()] - seen:
            seen.add(other)
            frontier.append(other)
    return len(seen) == len(graph)


def is_pairwise(tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> bool:
    graph = _neighbours(tables, edges)
    return all(len(others) == len(graph) - 1 for others in graph.values())


def has_neighbours(tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> bool:
    graph = _neighbours(tables, edges)
    return len(graph) == 1 or all(graph.values())


_VALIDATORS = {CONNECTED: is_connected, PAIRWISE: is_pairwise, NEIGHBORS: has_neighbours}


def satisfies(mode: str, tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> bool:
    """Does the selection ``tables`` satisfy ``mode`` over ``edges``?"""
    return _VALIDATORS[check_mode(mode)](list(tables), list(edges))


def explain(mode: str, tables: Iterable[T], edges: Iterable[tuple[T, T]]) -> str | None:
    """Why the selection fails ``mode`` (naming tables), or None when it satisfies it."""
    tables, edges = list(tables), list(edges)
    if satisfies(mode, tables, edges):
        return None
    graph = _neighbours(tables, edges)
    if mode == NEIGHBORS:
        alone = sorted(str(t) for t, others in graph.items() if not others)
        return f"table(s) {', '.join(alone)} touch no other selected table"
    if mode == PAIRWISE:
        a, b = next((a, b) for a in graph for b in graph if a != b and b not in graph[a])
        return f"tables {a} and {b} are not adjacent"
    return f"the {len(graph)} selected tables do not form one connected group"
