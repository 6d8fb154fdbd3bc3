"""What the benchmark builds: the key orders, the guard under test, and the SQL of each bare build.

Pure definitions (no connection): the floors, the exploration and the tests
all build the same statements from here, so a floor is exactly the shipped
guard's ``ADD CONSTRAINT`` and a proposed key order is exactly the guard the
real upgrade installs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reserve.schema import guards
from reserve.schema.guards import Guard

SEED_KEY = ("restaurant_id", "resource_type", "resource_id", "window")
# Key orders tried besides the shipped one and the seed's.
KEY_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("restaurant_id", "window", "resource_id", "resource_type"),
    ("restaurant_id", "window", "resource_type", "resource_id"),
    ("restaurant_id", "resource_id", "window", "resource_type"),
    ("restaurant_id", "resource_id", "resource_type", "window"),
    ("resource_id", "window", "restaurant_id", "resource_type"),
    ("resource_id", "restaurant_id", "resource_type", "window"),
    ("window", "restaurant_id", "resource_id", "resource_type"),
)


def proposed_guard(key: Sequence[str] | None = None) -> Guard:
    """The guard a run measures as shipped: ``guards.NEW_GUARD``, or it with the key order ``key``.

    The proposed guard keeps the shipped name, operators and timing; only the
    order of the same columns may change. Nothing global is replaced: the
    guard is handed to the migration, the predictor and the floors.
    """
    if not key:
        return guards.NEW_GUARD
    if sorted(key) != sorted(guards.NEW_GUARD.key):
        raise ValueError(f"a key order must use exactly the columns {sorted(guards.NEW_GUARD.key)}")
    return replace(guards.NEW_GUARD, key=tuple(key))


def key_label(key: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' if c == "window" else c for c in key)


def order_name(key: Sequence[str]) -> str:
    short = {"restaurant_id": "restaurant", "resource_type": "type", "resource_id": "resource", "window": "window"}
    return "_".join(short[c] for c in key)


def constraint_sql(name: str, key: Sequence[str], *, timing: str = "DEFERRABLE INITIALLY IMMEDIATE",
                   with_params: str = "", table: str = guards.TABLE) -> str:
    """A bare ADD CONSTRAINT of an exclusion guard with ``key`` (same operators and predicate as the guards)."""
    definition = Guard(name, tuple(key), timing).definition
    if with_params:
        definition = definition.replace(") WHERE", f") WITH ({with_params}) WHERE", 1)
    return f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"


def index_sql(name: str, key: Sequence[str], table: str = guards.TABLE) -> str:
    """A plain partial GiST index on ``key``: the guard's index without the exclusion check."""
    return f"CREATE INDEX {name} ON {table} USING gist ({key_label(key)}) WHERE (NOT shadow)"


@dataclass(frozen=True)
class Build:
    """One bare build: its statements (run in one transaction), how to undo it, and what it is."""

    name: str
    statements: tuple[str, ...]
    drop: str
    key: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    index: str = ""
    note: str = ""


def constraint_build(name: str, key: Sequence[str], *, settings: Sequence[str] = (), with_params: str = "",
                     note: str = "") -> Build:
    cname = f"bench_{name}"
    return Build(name, (constraint_sql(cname, key, with_params=with_params),),
                 f"ALTER TABLE {guards.TABLE} DROP CONSTRAINT {cname}", tuple(key), tuple(settings), cname, note)


def index_build(name: str, key: Sequence[str]) -> Build:
    iname = f"bench_{name}"
    return Build(name, (index_sql(iname, key),), f"DROP INDEX public.{iname}", tuple(key), (), iname)


def old_guard_build() -> Build:
    """The old guard rebuilt as shipped: the rollback's floor, and how the floors leave the table at 0003."""
    old = guards.OLD_GUARD
    return Build("floor_old", (old.add_sql(),), old.drop_sql(), old.key, index=old.name)
