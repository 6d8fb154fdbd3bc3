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
from collections.abc import Callable
from typing import Any

import psycopg
from alembic.util import CommandError
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import FAIL, OK, WARN, Report
from reserve.schema import failures, movers, revisions
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import changelog, teardown
from reserve.schema.swap import state as swap_state

PROBE_WRITES = 200
MOVERS_WAIT_S = 30.0  # how long finish and abort wait for another run's migration lock (--wait)
SWAP_REVISION = revisions.SWAP_REVISION


def status(url: URL, *, probe_writes: int = PROBE_WRITES) -> Report:
    """Whether the rollback is instant, since when, the log's depth and lag, the conflicts, the overhead and the disk."""
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
        if found.phase in swap_state.DROPPABLE["drop"]:
            left_by = ("an interrupted `reserve swap finish` left the previous table, out of step,"
                       if found.phase == swap_state.DETACHED else "a rollback left the table it replaced")
            report.add("swap", WARN, f"{left_by} in {swap_state.SHADOW} (dropping it needs a brief lock on bookings "
                       "and restaurants): `reserve swap finish` drops it")
            return report
        if found.phase != swap_state.WINDOW:
            report.add("swap", WARN, f"an online {found.direction} is in flight (phase: {found.phase}); "
                       f"finish it with the same alembic command", conflicts=ids)
            return report
        if probe_writes:
            report.facts["capture_write_overhead"] = measure_overhead(conn, probe_writes)
        if found.conflicts:
            report.add("instant rollback", WARN, f"not instant: {found.conflicts} allocation(s) the previous table "
                       f"cannot take under {found.standby_guard}: {', '.join(ids)}; `alembic downgrade -1` retries "
                       "them first and refuses, listing each pair, while any remains", conflicts=ids)
        elif report.facts["log_rows"]:
            report.add("instant rollback", OK, f"possible: {report.facts['log_rows']} write(s) logged and not yet "
                       f"replayed into the previous table (the replayer's lag: {report.facts['replay_lag_s']:.0f}s); "
                       "a conflict among them is found when they are; `alembic downgrade -1` replays the rest and "
                       "exchanges back")
        else:
            report.add("instant rollback", OK, "possible: the previous table is in step; `alembic downgrade -1` "
                       "is an exchange back")
    return report


def _figures(conn: psycopg.Connection[Any], found: swap_state.SwapState) -> dict[str, Any]:
    size, writes = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass), "
        "       pg_stat_get_tuples_inserted(%s::regclass) + pg_stat_get_tuples_updated(%s::regclass) "
        "       + pg_stat_get_tuples_deleted(%s::regclass)",
        (swap_state.SHADOW,) * 4).fetchone()
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
        **_log_figures(conn),
    }


def _log_figures(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The change log's depth and how long its oldest row has waited (the replay's lag)."""
    depth = changelog.depth(conn)
    return {"log_rows": depth.rows, "replay_lag_s": depth.lag_s}


def measure_overhead(conn: psycopg.Connection[Any], writes: int) -> dict[str, Any]:
    """What the capture adds to a write, measured on allocations itself (its WAL, keys, indexes, RLS): rounds of
    single-row inserts with the capture on and off, interleaved, in one transaction that is rolled back
    (nothing is written, the capture is back as it was). Turning the trigger off takes SHARE ROW EXCLUSIVE on
    allocations: writers wait for the probe (``writes`` inserts, tens of milliseconds), so it is taken with a
    100 ms lock_timeout and the hold is reported."""
    restaurant = conn.execute("SELECT id FROM public.restaurants LIMIT 1").fetchone()
    if restaurant is None:
        return {}
    insert = ("INSERT INTO public.allocations (restaurant_id, resource_type, resource_id, \"window\") VALUES "
              "(%s, 'table', gen_random_uuid(), tstzrange(now() + make_interval(years => 50, secs => %s), "
              "now() + make_interval(years => 50, secs => %s + 1)))")
    trigger = f"public.allocations {{}} TRIGGER {swap_state.CAPTURE_TRIGGER}"
    rounds, per_round = 4, max(1, writes // 8)
    timings: dict[str, float] = {"on": 0.0, "off": 0.0}
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL statement_timeout = '30s'")
            conn.execute("SET LOCAL lock_timeout = '100ms'")
            locked = None
            for n in range(rounds):
                for state in ("on", "off") if n % 2 == 0 else ("off", "on"):
                    conn.execute(f"ALTER TABLE {trigger.format('ENABLE ALWAYS' if state == 'on' else 'DISABLE')}")
                    locked = locked or time.perf_counter()
                    timings[state] += _timed(conn, insert, restaurant[0], per_round, offset=n * per_round)
            held = time.perf_counter() - (locked or time.perf_counter())
    except psycopg.Error as exc:
        return {"error": str(exc).splitlines()[0]}
    total = rounds * per_round
    return {"writes": total * 2, "captured_ms_per_write": round(timings["on"] * 1000 / total, 3),
            "plain_ms_per_write": round(timings["off"] * 1000 / total, 3),
            "ratio": round(timings["on"] / timings["off"], 2) if timings["off"] else 0.0,
            "share_row_exclusive_held_ms": round(held * 1000, 1)}


def _timed(conn: psycopg.Connection[Any], statement: str, restaurant: Any, writes: int, offset: int = 0) -> float:
    started = time.perf_counter()
    for n in range(offset * 2, offset * 2 + writes):
        conn.execute(statement, (restaurant, n, n))
    return time.perf_counter() - started


# What a follower's round may meet and outlive: a mover's lock it waited for too long (55P03), its batch
# cancelled by a mover (57014), a deadlock or serialization failure PostgreSQL broke by cancelling it. Its
# batch rolled back whole; the log rows stay for the next round.
_YIELDED = ("55P03", "57014", "40P01", "40001")


def follow(url: URL, *, interval_s: float = 2.0, rounds: int | None = None,
           progress: Any = None) -> Report:
    """Keep the shadow (in the window: the previous table) in step where pg_cron is not installed: replay the
    change log every ``interval_s`` seconds until the swap's machinery is gone (finished, aborted) or
    ``rounds`` rounds have run; ``progress`` gets one line per round (depth, lag, conflicts). A follower
    yields to every mover: it skips a round while another replayer holds the replay's lock, and a round a
    mover cancels or makes wait is logged and tried again at the next one, never the end of the service."""
    report = Report("swap follow")
    replayed = done = 0
    with db.connect(url, autocommit=True) as conn:
        report.facts.update({"database": db.masked(url)})
        session = PsycopgSession(conn)
        while rounds is None or done < rounds:
            try:
                if swap_state.read(conn) is None:
                    report.add("follow", OK, f"no online swap in flight any more; {replayed} log rows replayed")
                    return report
                replayed += changelog.replay_until(session, follower=True)
                figures = _log_figures(conn)
                line = (f"replayed {replayed} log rows; log {figures['log_rows']} rows, lag "
                        f"{figures['replay_lag_s']:.1f}s, conflicts {swap_state.read(conn).conflicts}")
            except psycopg.Error as exc:
                if failures.sqlstate(exc) not in _YIELDED:
                    raise
                line = f"yielded to a mover ({exc.sqlstate}: {str(exc).splitlines()[0]}); trying again next round"
            done += 1
            if progress is not None:
                progress(line)
            if rounds is None or done < rounds:
                time.sleep(interval_s)
        report.facts.update(_log_figures(conn))
    report.add("follow", OK, f"{replayed} log rows replayed in {done} round(s)")
    return report


def finish(url: URL, *, wait_s: float = MOVERS_WAIT_S) -> Report:
    """Close the window: drop the previous table and the capture.

    Idempotent: a rerun after an interruption completes it, and with nothing
    left to finish at head it says so and exits 0. Refused (exit 1, nothing
    changed) below head, while an online swap is still in flight, or while
    another run holds the migration lock after ``wait_s`` seconds.
    """
    report = Report("swap finish")
    with db.connect(url, autocommit=True) as conn:
        report.facts.update({"database": db.masked(url)})
        return _moving(report, conn, "finish", wait_s, lambda session: _finish(report, session))


def _finish(report: Report, session: PsycopgSession) -> Report:
    recorded = revisions.current_revision(session.conn)
    report.facts["revision"] = recorded or "none"
    found = swap_state.read(session)
    if found is None and recorded == revisions.head():
        report.add("finish", WARN, "nothing to finish: no swap window is open")
        return report
    if found is None:
        report.add("finish", FAIL, f"the database is at {recorded or 'no revision'}, below head: there is no "
                   "swap window to finish")
        return report
    report.add("finish", OK, teardown.finish(session, action="reserve swap finish"))
    return report


def abort(url: URL, *, wait_s: float = MOVERS_WAIT_S) -> Report:
    """Drop an online swap that has not exchanged yet; the live table is untouched. Refused (exit 1) otherwise."""
    report = Report("swap abort")
    with db.connect(url, autocommit=True) as conn:
        report.facts.update({"database": db.masked(url), "revision": revisions.current_revision(conn) or "none"})
        return _moving(report, conn, "abort", wait_s, lambda session: _abort(report, session))


def _abort(report: Report, session: PsycopgSession) -> Report:
    report.add("abort", OK, teardown.abort(session, action="reserve swap abort"))
    return report


def _moving(report: Report, conn: psycopg.Connection[Any], name: str, wait_s: float,
            move: Callable[[PsycopgSession], Report]) -> Report:
    """Run ``move`` holding the movers' lock (reserve.schema.movers), every state read made under it; a refusal
    (the lock still held elsewhere, the swap in another phase) is a failed check (exit 1), nothing changed."""
    try:
        with movers.held(conn, wait_s=wait_s, action=f"reserve swap {name}"):
            return move(PsycopgSession(conn))
    except CommandError as exc:
        report.add(name, FAIL, str(exc))
        return report
