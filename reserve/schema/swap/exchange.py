"""The exchange: live and standby trade places under one bounded ACCESS EXCLUSIVE lock, catalog work only.

Before the lock: the change log replayed down to a small tail
(``-x swap_tail_rows``), the two tables compared row by row (every difference
queued for the replay), the capture checked (enabled as installed), the
recorded conflicts retried (any that remain stop the exchange, listing the
allocation ids), and every transaction whose snapshot predates the shadow's
fill waited for (``-x swap_snapshot_wait``; such a snapshot would see an empty
or partial table after the exchange, the MVCC caveat of any table rewrite).
Under the lock: the tail replayed (nobody can append meanwhile), the
capture's triggers dropped from the table that leaves, the tables moved
between schemas, every dependent re-pointed (reserve.schema.swap.dependents),
and, when a window opens, the capture put on the new live table. The hold
depends on the writes of the last moment, not on the table.

After it (``settle``): the re-pointed foreign keys are validated without
blocking writers; then a window opens (after an upgrade) or the table that
left is retired (after a downgrade, or an exchange back): dropped with the
machinery when one short lock attempt allows, else emptied and left for
`reserve swap finish`.
"""

from __future__ import annotations

import logging
import re
import time

from alembic.util import CommandError

from reserve.schema import guards, locks
from reserve.schema.options import LockPolicy, SwapOptions, session_setting
from reserve.schema.session import LockGiveUp, Session, take
from reserve.schema.swap import changelog, dependents
from reserve.schema.swap.state import (
    EXCHANGE_SCHEMA,
    LIVE,
    LOG,
    RETIRED,
    STANDBY,
    SWAPPED,
    WINDOW,
    SwapState,
    conflicts,
    read,
)

log = logging.getLogger("reserve.schema.swap")

AE = "ACCESS EXCLUSIVE"
MACHINERY_TABLES = (STANDBY, LOG, "reserve_swap.conflicts", "reserve_swap.state")
# Dropping the standby removes its foreign keys' triggers from the tables they reference.
DROP_LOCKS = {**dict.fromkeys(MACHINERY_TABLES, AE), "public.bookings": AE, "public.restaurants": AE}


class _ConflictsAppeared(Exception):
    """The replay recorded a conflict between the last check and the exchange's lock: refused, no lock held."""


def _refuse_conflicts(session: Session, action: str, guard: guards.Guard) -> None:
    """Refuse the exchange, naming every recorded allocation and who it collides with in the live table (found
    with no lock held: the exchange's transaction is over)."""
    found = conflicts(session)
    total = session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]
    ids = [allocation for allocation, _, _ in found]
    pairs = [f"{a} & {b}" for a, b in session.execute(guard.partners_sql(), {"ids": ids}).fetchall()]
    paired = {allocation for pair in pairs for allocation in pair.split(" & ")}
    failed = [f"{allocation} ({sqlstate}: {detail})" for allocation, sqlstate, detail in found
              if allocation not in paired]
    listed = "; ".join(filter(None, [f"pairs of allocations that break {guard.name}: {', '.join(pairs)}" if pairs
                                     else "", f"copies that failed: {', '.join(failed)}" if failed else ""]))
    raise CommandError(
        f"{action}: {total} allocation(s) cannot be kept under {guard.name} (the same resource in two restaurants "
        f"at once, or a failed copy): {listed}. Nothing was changed; resolve these allocations, then run it again.")


def _exchange(session: Session, *, action: str, open_window: bool, standby_guard_after: str,
              direction: str) -> None:
    """The one short lock: the log's tail replayed, live and shadow trade places, dependents follow, the
    capture moves to the new live table when a window opens; the state says what happened."""
    with session.transaction():
        session.execute(changelog.replay_lock_sql())  # no replayer (pg_cron, `swap follow`) is left to wait for
        deps = dependents.find(session)
        take(session, {LIVE: AE, STANDBY: AE, LOG: AE, **dict.fromkeys(deps.tables, AE)},
             action=f"{action}: exchange", restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        tail = changelog.replay_in(session)
        if changelog.not_capturing(session, LIVE):
            raise _CaptureChanged
        if session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]:
            raise _ConflictsAppeared
        started = time.perf_counter()
        for statement in changelog.remove(LIVE):
            session.execute(statement)
        for statement in (f"CREATE SCHEMA {EXCHANGE_SCHEMA}", f"ALTER TABLE {LIVE} SET SCHEMA {EXCHANGE_SCHEMA}",
                          f"ALTER TABLE {STANDBY} SET SCHEMA public",
                          f"ALTER TABLE {EXCHANGE_SCHEMA}.allocations SET SCHEMA reserve_swap",
                          f"DROP SCHEMA {EXCHANGE_SCHEMA}"):
            session.execute(statement)
        for statement in deps.repoint(moved_to=STANDBY):
            session.execute(statement)
        if open_window:
            for statement in changelog.install(LIVE):
                session.execute(statement)
        session.execute("UPDATE reserve_swap.state SET phase = %s, direction = %s, standby_guard = %s, "
                        "swapped_at = now(), filled_xid = pg_current_xact_id()",
                        (SWAPPED, direction, standby_guard_after))
        log.info("%s: exchanged %s and %s (%d log rows replayed, then catalog work: %.1f ms under the lock)",
                 action, LIVE, STANDBY, tail, (time.perf_counter() - started) * 1000)
    log_hold(action, "exchange", locked, f"{LIVE} and its dependents")


class _CaptureChanged(Exception):
    """The capture's triggers were changed between the check and the lock: refused, no lock held."""


def _refuse_if_not_capturing(session: Session, action: str) -> None:
    changed = changelog.not_capturing(session, LIVE)
    if changed:
        raise CommandError(
            f"{action}: {'; '.join(changed)}: writes may have gone unlogged, and the shadow cannot be trusted to "
            "be in step. Nothing was changed. Put it back as installed (`ALTER TABLE public.allocations ENABLE "
            "ALWAYS TRIGGER …`), then run it again: the tables are compared row by row before the exchange.")


def catch_up(session: Session, options: SwapOptions, *, action: str) -> None:
    """Before the lock: replay down to the tail, compare the tables row by row and replay what differs."""
    _refuse_if_not_capturing(session, action)
    started = time.monotonic()
    replayed = changelog.replay_until(session, options.tail_rows)
    queued = changelog.queue_differences(session)
    replayed += changelog.replay_until(session, options.tail_rows)
    log.info("%s: log replayed (%d rows), tables compared row by row (%d differences queued and replayed) in %.1fs",
             action, replayed, queued, time.monotonic() - started)


def wait_for_old_snapshots(session: Session, options: SwapOptions, *, action: str) -> None:
    """Wait for every transaction in this database whose snapshot predates the shadow's bulk fill (after the
    exchange it would see the table empty or partial: the MVCC caveat of any table rewrite), as CREATE INDEX
    CONCURRENTLY waits for old snapshots: for at most ``swap_snapshot_wait`` seconds, then refuse naming
    them, with nothing changed. (A snapshot newer than the fill but older than the last replays sees the rows
    replayed since it was taken missing: the writes of the last moments, which the guard still checks.)"""
    deadline = time.monotonic() + options.snapshot_wait_s
    (horizon,) = session.execute("SELECT filled_xid::text FROM reserve_swap.state").fetchone()
    if horizon is None:
        return
    while True:
        old = session.execute(
            "SELECT a.pid, COALESCE(NULLIF(a.application_name, ''), '-'), "
            "       to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
            "FROM pg_stat_activity a "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' "
            "  AND a.backend_xmin IS NOT NULL AND age(a.backend_xmin) > age((%s::bigint %% 4294967296)::text::xid) "
            f"  AND NOT {locks.WAITING_FOR_MIGRATION_LOCK_SQL.format(pid='a.pid')} "
            "ORDER BY a.xact_start", (horizon,)).fetchall()
        if not old:
            return
        if time.monotonic() >= deadline:
            sessions = ", ".join(f"pid {pid} ({name}, in a transaction since {since} UTC)" for pid, name, since in old)
            raise CommandError(
                f"{action}: {len(old)} transaction(s) hold a snapshot older than the shadow's contents and would "
                f"see allocations empty or partial after the exchange: {sessions}. Nothing was changed; let them "
                "end (or end them), then run it again (-x swap_snapshot_wait=SECONDS waits longer).")
        time.sleep(0.1)


def _checked_exchange(session: Session, found: SwapState, guard: guards.Guard, options: SwapOptions, *,
                      action: str, open_window: bool, standby_guard_after: str, direction: str) -> None:
    """Catch up, refuse when conflicts remain (before the lock, or when one appears under it) or the capture
    was changed, wait for old snapshots, exchange."""
    catch_up(session, options, action=action)
    if session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]:
        _refuse_conflicts(session, action, guard)
    wait_for_old_snapshots(session, options, action=action)
    changelog.replay_until(session, options.tail_rows)  # what was logged while it waited, then at once the lock
    try:
        _exchange(session, action=action, open_window=open_window, standby_guard_after=standby_guard_after,
                  direction=direction)
    except _ConflictsAppeared:
        _refuse_conflicts(session, action, guard)
    except _CaptureChanged:
        _refuse_if_not_capturing(session, action)
        raise CommandError(f"{action}: the capture changed while the exchange waited for its lock; nothing was "
                           "changed: run it again") from None


def forward(session: Session, found: SwapState, new_guard: guards.Guard, options: SwapOptions, *,
            action: str) -> None:
    """A built, backfilled shadow becomes the live table."""
    guard = new_guard if found.direction == "upgrade" else guards.OLD_GUARD
    previous = guards.OLD_GUARD.name if found.direction == "upgrade" else new_guard.name
    _checked_exchange(session, found, guard, options, action=action, open_window=found.direction == "upgrade",
                      standby_guard_after=previous, direction=found.direction)


def back(session: Session, found: SwapState, new_guard: guards.Guard, options: SwapOptions, *,
         action: str) -> str:
    """Inside the window, the rollback: the previous table, kept in step by the replay, becomes live again."""
    _checked_exchange(session, found, guards.OLD_GUARD, options, action=action, open_window=False,
                      standby_guard_after=new_guard.name, direction="downgrade")
    return settle(session, read(session), action=action)


def settle(session: Session, found: SwapState | None, *, action: str) -> str:
    """After the exchange: validate the re-pointed foreign keys, then open the window or drop the machinery."""
    assert found is not None and found.phase == SWAPPED
    for table, name in session.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), k.conname FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE k.confrelid = %s::regclass AND k.contype = 'f' AND NOT k.convalidated ORDER BY 1, 2",
            (LIVE,)).fetchall():
        with session.transaction():
            take(session, {table: "SHARE UPDATE EXCLUSIVE", LIVE: "ROW SHARE"}, action=f"{action}: validating {name}",
                 restore_lock_timeout=session_setting("lock_timeout"))
            session.execute(f'ALTER TABLE {table} VALIDATE CONSTRAINT "{name}"')
    if found.direction == "upgrade":
        with session.transaction():
            session.execute("UPDATE reserve_swap.state SET phase = %s, window_opened_at = now()", (WINDOW,))
            every = changelog.schedule_replay(session)
        follower = (f"the pg_cron job {changelog.CRON_JOB} replays the change log ({every})" if every else
                    "run `reserve swap follow` to keep it in step (pg_cron is not installed here)")
        return (f"{action}: exchanged; the previous table stays in step in {STANDBY} (the window): {follower}; "
                "`alembic downgrade -1` replays and swaps back instantly, `reserve swap finish` closes it")
    return retire(session, action=action)


def retire(session: Session, *, action: str) -> str:
    """After a downgrade: the table that left is emptied (under its own lock only, so that its files go while
    nobody waits), then dropped with the machinery if one short lock attempt allows it; else it is left to
    `reserve swap finish` (or the next revision run).

    Dropping it removes its foreign keys, which takes ACCESS EXCLUSIVE on bookings and restaurants for an
    instant: behind any long report on bookings that waits, and every booking read queues behind the wait. The
    emergency rollback does not retry that; an emptied table with no capture costs an index probe per deleted
    booking (its foreign keys cascade) and nothing else, and is gone at the next quiet moment.
    """
    with session.transaction():
        session.execute("UPDATE reserve_swap.state SET phase = %s, retired_at = now()", (RETIRED,))
        changelog.unschedule_replay(session)  # nothing is replayed into the table that left (after the lock)
    once = LockPolicy.from_x_options()
    try:
        drop_retired(session, action=action, policy=LockPolicy(once.lock_timeout, attempts=1, pause_s=0))
    except LockGiveUp as exc:
        emptied = "emptied" if exists_empty(session) else "not emptied yet (something held it)"
        log.warning("%s: the table that left is %s, not dropped (%s); `reserve swap finish` drops it", action,
                    emptied, exc)
        return (f"{action}: exchanged; the table that left is {emptied} in {STANDBY}, to be dropped by "
                "`reserve swap finish` when nothing holds bookings or restaurants for a moment")
    return f"{action}: exchanged; the table that left and the swap's machinery are dropped"


def exists_empty(session: Session) -> bool:
    return session.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {STANDBY})").fetchone()[0]


def detach(session: Session, *, action: str) -> None:
    """Closing a window, first step: the capture off the live table and the state retired, under a bounded
    ACCESS EXCLUSIVE on allocations for catalog work only. From here the previous table is out of step (the
    rollback is a rebuild) and nothing public touches it."""
    with session.transaction():
        take(session, {LIVE: AE, STANDBY: AE, LOG: AE}, action=f"{action}: detaching the capture",
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        for statement in changelog.remove(LIVE):
            session.execute(statement)
        session.execute("UPDATE reserve_swap.state SET phase = %s, retired_at = now()", (RETIRED,))
    log_hold(action, "detaching the capture", locked, LIVE)


def drop_retired(session: Session, *, action: str, policy: LockPolicy | None = None) -> None:
    """A retired table (no capture: nothing public writes to it) is emptied first, under its own lock, so that
    the drop that follows holds bookings and restaurants for catalog work only, not while its files go."""
    with session.transaction():
        take(session, {STANDBY: AE, LOG: AE}, action=f"{action}: emptying the table that left", policy=policy,
             restore_lock_timeout=session_setting("lock_timeout"))
        session.execute(f"TRUNCATE {STANDBY}, {LOG}")
    close(session, action=action, policy=policy)


def close(session: Session, *, action: str, policy: LockPolicy | None = None) -> None:
    """Drop the capture from the live table and the whole machinery (the standby with it), in one transaction
    with bounded lock attempts: interrupted, or given up (LockGiveUp), it has changed nothing, so a window is
    never left open without its capture. Cheap under its locks only when the standby is empty or small
    (drop_retired empties it first; an abort drops what the backfill copied so far)."""
    captured = changelog.installed_on(session, LIVE)
    with session.transaction():
        wanted = {**({LIVE: AE} if captured else {}), **DROP_LOCKS}
        take(session, wanted, action=f"{action}: dropping the shadow and the capture", policy=policy,
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        for statement in changelog.remove(LIVE):
            session.execute(statement)
        changelog.unschedule_replay(session)
        session.execute("DROP SCHEMA reserve_swap CASCADE")
    log_hold(action, "dropping the machinery", locked,
             ", ".join([LIVE] * captured + ["public.bookings", "public.restaurants"]))


def finish(session: Session, *, action: str = "reserve swap finish") -> str:
    """Close an open window: the previous table and the capture go; the rollback is then a rebuild."""
    found = read(session)
    if found is None:
        raise CommandError(f"{action}: no swap window is open: nothing to finish")
    if found.phase == RETIRED:
        drop_retired(session, action=action)
        return f"{action}: the table left in {STANDBY} is dropped, with the swap's machinery"
    if found.phase != WINDOW:
        raise CommandError(f"{action}: the online {found.direction} is still in flight (phase: {found.phase}); "
                           "finish it first, or `reserve swap abort` before its exchange")
    changelog.replay_until(session)  # conflicts and figures up to date to the last moment of the window
    detach(session, action=action)
    drop_retired(session, action=action)
    return f"{action}: the window is closed; {STANDBY} and the capture are dropped"


def abort(session: Session, *, action: str = "reserve swap abort") -> str:
    """Drop a swap that has not exchanged yet: the live table is untouched, the shadow and the capture go."""
    found = read(session)
    if found is None:
        raise CommandError(f"{action}: no swap is in flight: nothing to abort")
    if found.exchanged:
        raise CommandError(f"{action}: the exchange has happened already (phase: {found.phase}); "
                           + ("close it with `reserve swap finish`" if found.phase in (WINDOW, RETIRED)
                              else "finish it with the same alembic command"))
    close(session, action=action)
    return f"{action}: the online {found.direction} is dropped; {LIVE} is as it was"


# The line log_hold writes, for a reader of an Alembic run's output (the soak runs it as a subprocess).
HOLD_LINE = re.compile(r"held ACCESS EXCLUSIVE on (?P<tables>.+?) for (?P<ms>[\d.]+) ms \(lock granted to commit\)")


def reported_holds(lines: list[str], table: str = LIVE) -> list[float]:
    """Seconds of each hold covering ``table`` that an Alembic run's output reports."""
    return [float(m["ms"]) / 1000 for m in map(HOLD_LINE.search, lines) if m and table in m["tables"]]


def log_hold(action: str, step: str, locked: float, tables: str = LIVE) -> None:
    """How long the step held ACCESS EXCLUSIVE on ``tables``, from the moment the lock was granted to the commit,
    seen from the client (so an upper bound); carried on the record as ``ae_hold_s`` (with ``ae_tables``) for the
    benchmark and the rehearsal."""
    held = time.perf_counter() - locked
    log.info("%s: %s held ACCESS EXCLUSIVE on %s for %.1f ms (lock granted to commit)", action, step, tables,
             held * 1000, extra={"ae_hold_s": held, "ae_step": step, "ae_tables": tables})
