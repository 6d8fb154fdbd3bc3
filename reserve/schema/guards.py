"""The two allocation overlap guards, and how to find rows that would break one.

One definition of each guard, used by the swap revision, by the checks run
before it, and by the tools that verify and benchmark it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

TABLE = "public.allocations"


@dataclass(frozen=True)
class Guard:
    """An exclusion constraint on allocations: its name, key and timing."""

    name: str
    key: tuple[str, ...]
    timing: str

    @property
    def catalog_definition(self) -> str:
        """As pg_get_constraintdef prints it (INITIALLY IMMEDIATE is the default, left unsaid)."""
        return self.definition.replace(" INITIALLY IMMEDIATE", "")

    @property
    def definition(self) -> str:
        """As written in ``ADD CONSTRAINT``."""
        key = ", ".join(f"{column} WITH {'&&' if column == 'window' else '='}" for column in self.key)
        key = key.replace("window WITH", '"window" WITH')
        return f"EXCLUDE USING gist ({key}) WHERE ((NOT shadow)) {self.timing}"

    @property
    def equal_columns(self) -> tuple[str, ...]:
        return tuple(column for column in self.key if column != "window")

    def add_sql(self) -> str:
        return f"ALTER TABLE {TABLE} ADD CONSTRAINT {self.name} {self.definition}"

    def drop_sql(self) -> str:
        return f"ALTER TABLE {TABLE} DROP CONSTRAINT {self.name}"

    def violations_sql(self, limit: int = 20, table: str = TABLE) -> str:
        """Pairs of live (non-shadow) allocations of ``table`` this guard would reject, lowest ids first.

        One sort of the table, no index needed (a self-join probing a GiST
        index whose leading column is not constrained is quadratic in
        practice): within each key, a row whose start lies before the latest
        end of the rows sorted before it overlaps one of them. Only those
        rows (at most ``limit``) are then joined to find their partners.
        Exact for the '[)' windows the booking functions write.
        """
        key = ", ".join(self.equal_columns)
        same = " AND ".join(f"a.{c} = f.{c}" for c in self.equal_columns)
        return f"""
WITH flagged AS (
  SELECT id, {key}, "window" FROM (
    SELECT id, {key}, "window",
           max(COALESCE(upper("window"), 'infinity')) OVER (
             PARTITION BY {key} ORDER BY lower("window") NULLS FIRST, id
             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS latest_end_before
    FROM {table} WHERE NOT shadow
  ) sorted
  WHERE latest_end_before > COALESCE(lower("window"), '-infinity')
  ORDER BY id LIMIT {int(limit)}
)
SELECT DISTINCT LEAST(a.id, f.id), GREATEST(a.id, f.id)
FROM flagged f JOIN {table} a ON {same} AND a."window" && f."window" AND a.id <> f.id AND NOT a.shadow
ORDER BY 1, 2 LIMIT {int(limit)}"""


    def partners_sql(self, limit: int = 20) -> str:
        """Pairs (lowest id first) of live allocations this guard would reject that involve one of the ids in
        ``%(ids)s``: who each of a few known rows collides with (one pass over the table at most)."""
        same = " AND ".join(f"a.{c} = f.{c}" for c in self.equal_columns)
        return f"""
SELECT DISTINCT LEAST(a.id, f.id)::text, GREATEST(a.id, f.id)::text
FROM {TABLE} f JOIN {TABLE} a ON {same} AND a."window" && f."window" AND a.id <> f.id AND NOT a.shadow
WHERE f.id = ANY(%(ids)s::uuid[]) AND NOT f.shadow
ORDER BY 1, 2 LIMIT {int(limit)}"""


# The guard before the change: one resource, one booking at a time across all
# tenants, checked at commit.
OLD_GUARD = Guard(
    name="allocations_resource_window_excl",
    key=("resource_type", "resource_id", "window"),
    timing="DEFERRABLE INITIALLY DEFERRED",
)

# The guard after the change: scoped by tenant, checked inside the statement.
# Key order chosen by `make bench` (docs/BENCHMARKS.md): restaurant first, then
# the window, builds the index (under the swap's ACCESS EXCLUSIVE lock) about
# a third faster than the seed's (restaurant_id, resource_type, resource_id,
# "window") and serves the checklist's restaurant-scoped probe faster too.
NEW_GUARD = Guard(
    name="allocations_no_overlap",
    key=("restaurant_id", "window", "resource_id", "resource_type"),
    timing="DEFERRABLE INITIALLY IMMEDIATE",
)

# Redundant with either guard's index; dropped by the swap, restored by its rollback.
REDUNDANT_INDEX = "allocations_resource_window_idx"
REDUNDANT_INDEX_SQL = f'CREATE INDEX {{concurrently}}{REDUNDANT_INDEX} ON {TABLE} USING gist (resource_id, "window")'


def redundant_index_sql(name: str = REDUNDANT_INDEX, *, concurrently: bool = False) -> str:
    """CREATE INDEX for the redundant index, under ``name`` (the rollback builds it under a pending name)."""
    return REDUNDANT_INDEX_SQL.replace(REDUNDANT_INDEX, name).format(concurrently="CONCURRENTLY " if concurrently else "")


def is_in_place(conn: psycopg.Connection[Any], guard: Guard) -> bool:
    """True when ``guard`` exists on allocations exactly as defined and validated.

    When it is, the catalog already proves that no rows break it (or any weaker
    guard), and no table scan is needed.
    """
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND conname = %s",
        (TABLE, guard.name),
    ).fetchone()
    return row is not None and row[1] and row[0] == guard.catalog_definition


def find_violations(conn: psycopg.Connection[Any], guard: Guard, limit: int = 20) -> list[tuple[str, str]]:
    """Pairs of allocation ids that ``guard`` would reject (at most ``limit``)."""
    return [(str(a), str(b)) for a, b in conn.execute(guard.violations_sql(limit)).fetchall()]
