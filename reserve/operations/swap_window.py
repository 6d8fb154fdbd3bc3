"""``reserve swap status|finish|abort``: the online swap's window, seen and closed deliberately.

After an online upgrade the previous table stays in step (reserve.schema.swap),
so that `alembic downgrade -1` is an exchange back, milliseconds under its
lock. That costs a second copy of every write and the disk of a second table:
``status`` says what it costs and whether the instant rollback still holds,
``finish`` closes the window after the observation period, ``abort`` drops
an online swap that has not exchanged yet.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from alembic.util import CommandError
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import FAIL, OK, WARN, Report
from reserve.schema import revisions
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import exchange
from reserve.schema.swap import state as swap_state

PROBE_WRITES = 200
SWAP_REVISION = "0004_allocations_no_overlap"


def status(url: URL, *, probe_writes: int = PROBE_WRITES) -> Report:
    """Whether the rollback is instant, since when, what was mirrored, the conflicts, the overhead and the disk."""
    report = Report("swap status")
    with db.connect(url, autocommit=True) as conn:
        found = swap_state.read(conn)
        report.facts.update({"database": db.masked(url), "revision": revisions.current_revision(conn) or "none"})
        if found is None:
            report.facts.update({"window": "closed", "instant_rollback": False})
            report.add("swap", OK, "no online swap in flight and no window open: `alembic downgrade -1` rebuilds "
                       "the old guard's table online")
            return report
        report.facts.update(_figures(conn, found))
        ids = [row[0] for row in swap_state.conflicts(conn)]
        if found.phase == swap_state.RETIRED:
            left_by = ("an interrupted `reserve swap finish` left the previous table, out of step,"
                       if found.direction == "upgrade" else "a rollback left the table it replaced")
            report.add("swap", WARN, f"{left_by} in {swap_state.STANDBY} (dropping it needs a brief lock on bookings "
                       "and restaurants): `reserve swap finish` drops it")
            return report
        if found.phase != swap_state.WINDOW:
            report.add("swap", WARN, f"an online {found.direction} is in flight (phase: {found.phase}); "
                       f"finish it with the same alembic command", conflicts=ids)
            return report
        if probe_writes:
            report.facts["mirror_write_overhead"] = measure_overhead(conn, probe_writes)
        if found.conflicts:
            report.add("instant rollback", WARN, f"not instant: {found.conflicts} allocation(s) the previous table "
                       f"cannot take under {found.standby_guard}: {', '.join(ids)}; `alembic downgrade -1` retries "
                       "them first and refuses, listing each pair, while any remains", conflicts=ids)
        else:
            report.add("instant rollback", OK, "possible: the previous table is in step; `alembic downgrade -1` "
                       "is an exchange back")
    return report


def _figures(conn: psycopg.Connection[Any], found: swap_state.SwapState) -> dict[str, Any]:
    size, writes = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass), "
        "       pg_stat_get_tuples_inserted(%s::regclass) + pg_stat_get_tuples_updated(%s::regclass) "
        "       + pg_stat_get_tuples_deleted(%s::regclass)",
        (swap_state.STANDBY,) * 4).fetchone()
    age = None
    if found.window_opened_at is not None:
        age = conn.execute("SELECT extract(epoch FROM now() - %s)::float8", (found.window_opened_at,)).fetchone()[0]
    return {
        "window": "open" if found.phase == swap_state.WINDOW else found.phase,
        "direction": found.direction,
        "instant_rollback": found.phase == swap_state.WINDOW and not found.conflicts,
        "window_opened_at": found.window_opened_at.isoformat() if found.window_opened_at else None,
        "window_age_s": round(age, 1) if age is not None else None,
        "previous_table_guard": found.standby_guard,
        "rows_written_to_the_standby": writes,
        "backfilled_rows": found.rows_copied,
        "conflicts": found.conflicts,
        "extra_disk_bytes": size,
    }


def measure_overhead(conn: psycopg.Connection[Any], writes: int) -> dict[str, float]:
    """What the mirror adds to a write, measured here: ``writes`` single-row inserts into allocations with the
    mirror copying each one at once, against the same inserts into a temporary copy of allocations' definition
    without it; all in one transaction that is rolled back (nothing is written)."""
    restaurant = conn.execute("SELECT id FROM public.restaurants LIMIT 1").fetchone()
    if restaurant is None:
        return {}
    insert = ("INSERT INTO {table} (restaurant_id, resource_type, resource_id, \"window\") VALUES "
              "(%s, 'table', gen_random_uuid(), tstzrange(now() + make_interval(years => 50, secs => %s), "
              "now() + make_interval(years => 50, secs => %s + 1)))")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL statement_timeout = '30s'")
            conn.execute(f"SET CONSTRAINTS {swap_state.SCHEMA}.{swap_state.APPLY_TRIGGER} IMMEDIATE")
            conn.execute("CREATE TEMP TABLE reserve_probe (LIKE public.allocations INCLUDING ALL) ON COMMIT DROP")
            mirrored = _timed(conn, insert.format(table="public.allocations"), restaurant[0], writes)
            plain = _timed(conn, insert.format(table="pg_temp.reserve_probe"), restaurant[0], writes)
    except psycopg.Error as exc:
        return {"error": str(exc).splitlines()[0]}
    return {"writes": writes, "mirrored_ms_per_write": round(mirrored * 1000 / writes, 3),
            "plain_ms_per_write": round(plain * 1000 / writes, 3), "ratio": round(mirrored / plain, 2) if plain else 0.0}


def _timed(conn: psycopg.Connection[Any], statement: str, restaurant: Any, writes: int) -> float:
    started = time.perf_counter()
    for n in range(writes):
        conn.execute(statement, (restaurant, n, n))
    return time.perf_counter() - started


def finish(url: URL) -> Report:
    """Close the window: drop the previous table and the mirror.

    Idempotent: a rerun after an interruption completes it, and with nothing
    left to finish at head it says so and exits 0. Refused (exit 1, nothing
    changed) below head or while an online swap is still in flight.
    """
    report = Report("swap finish")
    with db.connect(url, autocommit=True) as conn:
        recorded = revisions.current_revision(conn)
        report.facts.update({"database": db.masked(url), "revision": recorded or "none"})
        found = swap_state.read(conn)
        if found is None and recorded == revisions.head():
            report.add("finish", WARN, "nothing to finish: no swap window is open")
            return report
        if found is None:
            report.add("finish", FAIL, f"the database is at {recorded or 'no revision'}, below head: there is no "
                       "swap window to finish")
            return report
        return _closing(report, PsycopgSession(conn), "finish", exchange.finish)


def abort(url: URL) -> Report:
    """Drop an online swap that has not exchanged yet; the live table is untouched. Refused (exit 1) otherwise."""
    report = Report("swap abort")
    with db.connect(url, autocommit=True) as conn:
        report.facts.update({"database": db.masked(url), "revision": revisions.current_revision(conn) or "none"})
        return _closing(report, PsycopgSession(conn), "abort", exchange.abort)


def _closing(report: Report, session: PsycopgSession, name: str, action: Any) -> Report:
    try:
        done = action(session, action=f"reserve swap {name}")
    except CommandError as exc:
        report.add(name, FAIL, str(exc))
        return report
    report.add(name, OK, done)
    return report
