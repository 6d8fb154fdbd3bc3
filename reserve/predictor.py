"""Predict how long the swap (or its rollback) will hold ACCESS EXCLUSIVE on allocations.

Almost all of the hold is PostgreSQL building the guard's GiST index and then
checking every live row against it (an index probe per row). Neither can be
done ahead of time, and both depend on this server's speed and on how the
data is shaped, so the prediction measures instead of assuming:

1. copy a sample of allocations into a temporary table: every row of a
   random subset of the groups of the guard's leading uuid column
   (whole restaurants for ``allocations_no_overlap``, whole resources for
   the old guard), so each sampled group keeps all its rows and the GiST
   tree looks, locally, like the real one;
2. build the very same constraint (``guards.NEW_GUARD`` for an upgrade,
   ``guards.OLD_GUARD`` for a rollback) on that sample, and time it;
3. scale by rows·log(rows) of live (non-shadow) rows, the only rows in the
   index: N inserts and N probes into a tree of depth ~log N; and multiply
   by ``CALIBRATION``, the ratio of real holds to this estimate measured by
   ``make bench`` (docs/BENCHMARKS.md).

Only ACCESS SHARE is taken on allocations, for the copy (one short
transaction, with a lock_timeout so it never queues behind a pending swap);
the build runs on the session's own temporary table, which is dropped
afterwards. About 50,000 rows are built, a few seconds at any table size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from reserve.guards import NEW_GUARD, OLD_GUARD, TABLE, Guard

# Live rows built in the sample: large enough that the fixed costs of a build
# vanish and the sample's tree has the real one's depth minus one or two levels.
SAMPLE_ROWS = 50_000
# Real hold / scaled sample build, measured by `make bench` at 100k, 300k and 1M
# rows (docs/BENCHMARKS.md): covers what the sample does not do, writing the
# index through shared buffers and WAL and committing it.
CALIBRATION = 1.0
SAMPLE_TABLE = "reserve_predict_sample"
UUID_COLUMNS = ("restaurant_id", "resource_id")


@dataclass(frozen=True)
class Prediction:
    """The predicted ACCESS EXCLUSIVE hold, and how it was obtained."""

    seconds: float
    rows: int
    method: str
    live_rows: int = 0
    sample_live_rows: int = 0
    sample_build_s: float = 0.0
    elapsed_s: float = 0.0


def guard_for(direction: str) -> Guard:
    """The guard the swap builds under the lock: the new one up, the old one down."""
    if direction == "upgrade":
        return NEW_GUARD
    if direction == "downgrade":
        return OLD_GUARD
    raise ValueError(f"direction must be 'upgrade' or 'downgrade', not {direction!r}")


def sampling_column(guard: Guard) -> str:
    """The guard's leading uuid column: sampling whole groups of it keeps the tree's local shape."""
    return next(column for column in guard.equal_columns if column in UUID_COLUMNS)


def scale_factor(live_rows: int, sample_live_rows: int) -> float:
    """rows·log(rows) of the table over that of the sample (1 when the sample is the table)."""
    if sample_live_rows >= live_rows or sample_live_rows < 2:
        return 1.0
    return (live_rows / sample_live_rows) * (math.log(live_rows) / math.log(sample_live_rows))


def predict_swap_hold(conn: psycopg.Connection[Any], direction: str = "upgrade", *,
                      sample_rows: int = SAMPLE_ROWS, calibration: float = CALIBRATION) -> Prediction:
    """Predict the ACCESS EXCLUSIVE hold of the swap (``upgrade``) or its rollback (``downgrade``)."""
    guard = guard_for(direction)
    started = time.perf_counter()
    column = sampling_column(guard)
    if conn.autocommit:
        # Copy in its own short transaction, so ACCESS SHARE is released before the build.
        with conn.transaction():
            rows, live, sample_live = _copy_sample(conn, column, sample_rows)
        try:
            with conn.transaction(force_rollback=True):
                build_s = _timed_build(conn, guard)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS pg_temp.{SAMPLE_TABLE}")
    else:
        # Inside the caller's transaction: a savepoint, rolled back, leaves nothing behind.
        with conn.transaction(force_rollback=True):
            rows, live, sample_live = _copy_sample(conn, column, sample_rows)
            build_s = _timed_build(conn, guard)
    if live == 0:
        return Prediction(0.0, rows, "no live (non-shadow) allocations: the index build is instant",
                          elapsed_s=time.perf_counter() - started)
    factor = scale_factor(live, sample_live)
    seconds = build_s * factor * calibration
    share = 100.0 * sample_live / live
    method = (
        f"built {guard.name} on a sample of whole {column} groups ({sample_live:,} of {live:,} live rows, "
        f"{share:.1f}%) in {build_s:.2f}s on this server; scaled by rows*log(rows) (x{factor:.1f}) "
        f"and calibration x{calibration:g}"
    )
    return Prediction(seconds, rows, method, live, sample_live, build_s, time.perf_counter() - started)


def _copy_sample(conn: psycopg.Connection[Any], column: str, sample_rows: int) -> tuple[int, int, int]:
    """Copy whole ``column`` groups, about ``sample_rows`` live rows, into a temporary table.

    Groups are taken in the order of their hash (a fixed pseudo-random order,
    for random and time-ordered uuids alike) until ``sample_rows`` live rows
    are reached, so the sample is never empty and overshoots by one group at most.
    """
    conn.execute("SET LOCAL lock_timeout = '5s'")
    _enlarge_temp_buffers(conn)
    rows, live = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE NOT shadow) FROM {TABLE}").fetchone()
    conn.execute(f"DROP TABLE IF EXISTS pg_temp.{SAMPLE_TABLE}")
    conn.execute(
        f"""CREATE TEMP TABLE {SAMPLE_TABLE} AS
            SELECT a.* FROM {TABLE} a
            WHERE a.{column} IN (
              SELECT {column} FROM (
                SELECT {column}, sum(live) OVER (ORDER BY uuid_hash({column}), {column}) - live AS live_before
                FROM (SELECT {column}, count(*) FILTER (WHERE NOT shadow) AS live FROM {TABLE} GROUP BY {column}) g
              ) ranked
              WHERE live_before < %s)""",
        (sample_rows,),
    )
    sample_live = conn.execute(f"SELECT count(*) FROM pg_temp.{SAMPLE_TABLE} WHERE NOT shadow").fetchone()[0]
    return rows, live, sample_live


def _enlarge_temp_buffers(conn: psycopg.Connection[Any]) -> None:
    """Give the sample room in local buffers, as the real build has shared buffers.

    Only possible before the session first touches a temporary table; otherwise
    the session's current size is kept (the sample then runs a little slower).
    """
    try:
        with conn.transaction():
            conn.execute("SET LOCAL temp_buffers = '64MB'")
    except psycopg.errors.InvalidParameterValue:
        pass


def _timed_build(conn: psycopg.Connection[Any], guard: Guard) -> float:
    sql = f"ALTER TABLE pg_temp.{SAMPLE_TABLE} ADD CONSTRAINT {SAMPLE_TABLE}_guard {guard.definition}"
    started = time.perf_counter()
    conn.execute(sql)
    return time.perf_counter() - started
