"""``reserve snapshot`` and ``reserve diff``: the database state the checklist captured by hand.

A snapshot file is the catalog (reserve.schema.catalog) plus the Alembic revision and
exact row counts of the main tables: names, definitions and counts, never a
row's content, so it holds no personal data.
"""

from __future__ import annotations

import difflib
from typing import Any

import psycopg

from reserve.rollout import dataset
from reserve.schema import catalog, revisions


def capture(conn: psycopg.Connection[Any]) -> str:
    """The snapshot text of the connected database."""
    snap = catalog.snapshot(conn)
    snap["revision"] = [revisions.current_revision(conn) or "none"]
    snap["rows"] = [f"{table} {count}" for table, count in sorted(dataset.row_counts(conn).items())]
    return catalog.as_text(snap)


def diff(before: str, after: str, before_name: str = "before", after_name: str = "after") -> str:
    """A unified diff of two snapshots; empty when they are equal."""
    return "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), before_name, after_name, n=1,
    ))
