"""reserve.capacity.adjacency: each mode agrees with a brute-force definition on every generated selection."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reserve.capacity import adjacency
from reserve.capacity.adjacency import CONNECTED, MODES, NEIGHBORS, PAIRWISE


def _adjacent(edges: list[tuple[int, int]], a: int, b: int) -> bool:
    return a != b and ((a, b) in edges or (b, a) in edges)


def brute_connected(tables: list[int], edges: list[tuple[int, int]]) -> bool:
    """Connected: no way to split the selection in two non-empty parts without an edge between them."""
    tables = sorted(set(tables))
    for size in range(1, len(tables)):
        for part in combinations(tables, size):
            rest = [t for t in tables if t not in part]
            if not any(_adjacent(edges, a, b) for a in part for b in rest):
                return False
    return True


def brute_pairwise(tables: list[int], edges: list[tuple[int, int]]) -> bool:
    return all(_adjacent(edges, a, b) for a, b in combinations(sorted(set(tables)), 2))


def brute_neighbors(tables: list[int], edges: list[tuple[int, int]]) -> bool:
    chosen = set(tables)
    return len(chosen) == 1 or all(any(_adjacent(edges, t, u) for u in chosen) for t in chosen)


BRUTE = {CONNECTED: brute_connected, PAIRWISE: brute_pairwise, NEIGHBORS: brute_neighbors}

# Up to 7 tables out of 9, and arbitrary edges among all 9 (some leave the selection, some are self-loops).
selections = st.lists(st.integers(0, 8), min_size=1, max_size=7, unique=True)
edge_lists = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(tables=selections, edges=edge_lists, mode=st.sampled_from(MODES))
def test_every_mode_agrees_with_its_brute_force_definition(tables, edges, mode):
    assert adjacency.satisfies(mode, tables, edges) == BRUTE[mode](tables, edges)


@settings(max_examples=200, deadline=None)
@given(tables=selections, edges=edge_lists)
def test_pairwise_implies_connected_implies_neighbors(tables, edges):
    if adjacency.satisfies(PAIRWISE, tables, edges):
        assert adjacency.satisfies(CONNECTED, tables, edges)
    if adjacency.satisfies(CONNECTED, tables, edges):
        assert adjacency.satisfies(NEIGHBORS, tables, edges)


@settings(max_examples=200, deadline=None)
@given(tables=selections, edges=edge_lists, mode=st.sampled_from(MODES))
def test_explain_names_a_reason_exactly_when_the_selection_fails(tables, edges, mode):
    reason = adjacency.explain(mode, tables, edges)
    assert (reason is None) == adjacency.satisfies(mode, tables, edges)


@settings(max_examples=100, deadline=None)
@given(tables=selections, edges=edge_lists, mode=st.sampled_from(MODES))
def test_edge_direction_and_order_do_not_matter(tables, edges, mode):
    flipped = [(b, a) for a, b in reversed(edges)]
    assert adjacency.satisfies(mode, tables, edges) == adjacency.satisfies(mode, tables, flipped)


def test_two_separate_pairs_have_neighbours_but_are_not_connected():
    tables, edges = [1, 2, 3, 4], [(1, 2), (3, 4)]
    assert adjacency.satisfies(NEIGHBORS, tables, edges)
    assert not adjacency.satisfies(CONNECTED, tables, edges)
    assert "do not form one connected group" in adjacency.explain(CONNECTED, tables, edges)


def test_a_chain_is_connected_but_not_pairwise_and_the_reason_names_two_tables():
    tables, edges = ["T1", "T2", "T3"], [("T1", "T2"), ("T2", "T3")]
    assert adjacency.satisfies(CONNECTED, tables, edges)
    assert adjacency.explain(PAIRWISE, tables, edges) == "tables T1 and T3 are not adjacent"


def test_an_isolated_table_is_named():
    assert adjacency.explain(NEIGHBORS, ["A", "B", "C"], [("A", "B")]) == "table(s) C touch no other selected table"


def test_a_single_table_satisfies_every_mode():
    assert all(adjacency.satisfies(mode, ["T1"], []) for mode in MODES)


def test_unknown_mode_is_refused_naming_the_valid_ones():
    expected = "unknown adjacency mode 'diagonal': use one of connected, pairwise, neighbors"
    with pytest.raises(adjacency.UnknownMode, match=expected):
        adjacency.satisfies("diagonal", ["T1", "T2"], [])


def test_an_empty_selection_is_refused():
    with pytest.raises(ValueError, match="at least one table"):
        adjacency.satisfies(CONNECTED, [], [])
