"""Predict how long the swap (or its rollback) will hold ACCESS EXCLUSIVE on allocations.

Almost all of the hold is PostgreSQL building the guard's GiST index and then
checking every live row against it (one index probe per row). Neither can be
done ahead of time, and both depend on this server's speed and on the shape
of the data, so the prediction measures instead of assuming:

1. copy a sample of allocations into a temporary table: every row of a
   pseudo-random subset of the groups of the guard's leading uuid column
   (whole restaurants for a restaurant-led ``allocations_no_overlap``, whole
   resources for the old guard), about 50,000 live rows, so that each
   sampled group keeps all its rows and the sample's GiST tree looks,
   locally, like the real one;
2. build the very same constraint (``guards.NEW_GUARD`` for an upgrade,
   ``guards.OLD_GUARD`` for a rollback) on that sample, on this server, and
   time it;
3. scale by (live rows / sample live rows) ** ``GROWTH``. Each of the N rows
   is inserted into the tree and then probed against it, and the cost of
   each operation grows with the tree: with its depth, with the overlap of
   key ranges between pages (random uuids), and once the index outgrows
   shared_buffers with cache misses. ``make bench`` measures the exponent,
   per guard, at 100k, 300k and 1M rows: 1.07 for ``allocations_no_overlap``
   (restaurant, window first: close to N·log N) and 1.15 for the old guard
   (resource first: key ranges overlap more as the tree grows);
   ``CALIBRATION`` absorbs what the sample does not do (WAL for the index,
   the commit), also measured by ``make bench`` (docs/BENCHMARKS.md).

Only ACCESS SHARE is taken on allocations, for the copy (one short
transaction, with a lock_timeout so it never queues behind a pending swap);
the build runs on the session's own temporary table, dropped afterwards.
A few seconds at any table size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from reserve.schema import guards
from reserve.schema.guards import TABLE, Guard

# Live rows built in the sample: large enough that the fixed costs of a build
# vanish and that one group more or less does not matter.
SAMPLE_ROWS = 50_000
# How the build-and-check time grows with live rows: time ~ rows ** growth,
# per guard, fitted by `make bench` at 100k, 300k and 1M rows (docs/BENCHMARKS.md,
# "The predictor"): the exponent that carried the 50k-row sample's build to each
# measured hold was 1.085/1.066/1.063 for the new guard and 1.22/1.166/1.145 for
# the old one in 20261125T111825Z; 20261203T143226Z, on a slower day, over-predicted
# the old guard's rollback by +11/+19/+26% with 1.15: 1.12 between the two runs
# (+9/+12/+16% there, -1% on 20261203T090544Z's 1M). Refit when a guard's key changes.
GROWTH = {guards.NEW_GUARD.name: 1.07, guards.OLD_GUARD.name: 1.12}
# Real hold / scaled sample build, measured by `make bench`: what the sample
# does not do (WAL for the index, shared buffers, the commit).
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


# The online method (reserve.schema.swap), measured by `make bench` (docs/BENCHMARKS.md, "What is true at
# scale"; bench/results/20261203T090544Z.json and 20261203T143226Z.json, a day the machine ran ~1.7x slower):
# the exchange's ACCESS EXCLUSIVE hold is catalog work plus the log's last rows, about the same at any size
# (7-13 ms at 100k-1M in the first, 30-49 ms in the second), and longest for the rollback in the window with
# 4 clients writing as fast as they can (57 ms, then 267 ms: the longest, rounded up); the background (copy,
# key, guard, compare, exchange) cost 1.15x-1.34x the locked method's build in the first and 1.31x-1.56x in
# the second (the worst, rounded up); a confirm's p95 with the capture on is within the noise of the same
# table with it off (0.87x-1.02x: 1.0).
ONLINE_HOLD_S = 0.3
ONLINE_BACKGROUND_OVER_BUILD = 1.6
ONLINE_CONFIRM_P95_RATIO = 1.0


@dataclass(frozen=True)
class OnlinePrediction:
    """What the online method will cost: its short hold, the work in the background, the disk, the writes."""

    hold_s: float
    background_s: float
    extra_disk_bytes: int
    confirm_p95_ratio: float
    how: str


def predict_online(conn: psycopg.Connection[Any], direction: str, *, window_open: bool = False,
                   sample_rows: int = SAMPLE_ROWS, guard: Guard | None = None) -> OnlinePrediction:
    """The online swap of ``direction``: the exchange's hold is a constant; the background is the locked
    method's predicted build (measured on a sample here, as for the locked method) times what the online copy
    costs over it; the extra disk is a second copy of allocations with its indexes. A rollback inside an open
    window copies nothing: it only exchanges back."""
    size = conn.execute("SELECT pg_total_relation_size('public.allocations')").fetchone()[0]
    if window_open and direction == "downgrade":
        return OnlinePrediction(ONLINE_HOLD_S, 0.0, 0, 1.0, "inside the open window: an exchange back, no copy")
    build = predict_swap_hold(conn, direction, sample_rows=sample_rows, guard=guard)
    return OnlinePrediction(
        ONLINE_HOLD_S, build.seconds * ONLINE_BACKGROUND_OVER_BUILD, size, ONLINE_CONFIRM_P95_RATIO,
        f"the locked build predicted at {build.seconds:.1f}s ({build.method}) x{ONLINE_BACKGROUND_OVER_BUILD:g} "
        "for the online copy (make bench)")


def guard_for(direction: str) -> Guard:
    """The guard the swap builds under the lock: the new one up, the old one down."""
    if direction == "upgrade":
        return guards.NEW_GUARD
    if direction == "downgrade":
        return guards.OLD_GUARD
    raise ValueError(f"direction must be 'upgrade' or 'downgrade', not {direction!r}")


def sampling_column(guard: Guard) -> str:
    """The guard's leading uuid column: sampling whole groups of it keeps the tree's local shape."""
    return next(column for column in guard.equal_columns if column in UUID_COLUMNS)


def scale_factor(live_rows: int, sample_live_rows: int, growth: float) -> float:
    """(table's live rows / sample's live rows) ** growth; 1 when the sample is the table."""
    if sample_live_rows >= live_rows or sample_live_rows < 1:
        return 1.0
    return (live_rows / sample_live_rows) ** growth


def predict_swap_hold(conn: psycopg.Connection[Any], direction: str = "upgrade", *,
                      sample_rows: int = SAMPLE_ROWS, calibration: float = CALIBRATION,
                      guard: Guard | None = None) -> Prediction:
    """Predict the ACCESS EXCLUSIVE hold of the swap (``upgrade``) or its rollback (``downgrade``).

    ``guard``: the guard the upgrade installs, when not ``guards.NEW_GUARD`` (the benchmark's proposed key
    orders, passed to that Alembic run too); a rollback always builds ``guards.OLD_GUARD``.
    """
    guard = guard if guard is not None and direction == "upgrade" else guard_for(direction)
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
    growth = GROWTH[guard.name]
    factor = scale_factor(live, sample_live, growth)
    seconds = build_s * factor * calibration
    share = 100.0 * sample_live / live
    method = (
        f"built {guard.name} on a sample of whole {column} groups ({sample_live:,} of {live:,} live rows, "
        f"{share:.1f}%) in {build_s:.2f}s on this server; scaled by rows^{growth:g} (x{factor:.1f}) "
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
