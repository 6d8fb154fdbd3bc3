"""The exchange: live and shadow trade places under one bounded ACCESS EXCLUSIVE lock, catalog work only.

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
left is retired (after a downgrade, or an exchange back: reserve.schema.swap.teardown).
Every phase change is a compare-and-set made under the step's locks
(reserve.schema.swap.state.advance).
"""

from __future__ import annotations

import logging
import time

from alembic.util import CommandError

from reserve.schema import failures, guards, locks
from reserve.schema.options import SwapOptions, session_setting
from reserve.schema.session import Session, take
from reserve.schema.swap import changelog, dependents, likeness, refusals, shadow, teardown
from reserve.schema.swap.holds import log_hold
from reserve.schema.swap.state import (
    BACKFILLED,
    EXCHANGE_SCHEMA,
    LIVE,
    SHADOW,
    SWAPPED,
    WINDOW,
    StateMoved,
    SwapState,
    advance,
    conflicts,
    read,
)

log = logging.getLogger("reserve.schema.swap")

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


class _DependentsChanged(Exception):
    """Something began to depend on allocations before the exchange's locks were granted: released, tried again."""


class _TailTooLong(Exception):
    """More than ``swap_tail_rows`` log rows were waiting once the locks were granted (writes committed while the
    exchange waited for them): released, caught up, tried again, so that the hold never depends on the write
    rate."""


# How often the exchange releases and starts again (dependents changed, the tail grew past its cap while it
# waited, a row the tail's replay must lock was held): each time with nothing changed, caught up first.
EXCHANGE_ATTEMPTS = 5
# Under the exchange's lock the tail's replay locks the booking and restaurant rows it copies (FOR KEY SHARE):
# an application transaction holding one FOR UPDATE is not waited for longer than this.
TAIL_LOCK_TIMEOUT = "200ms"


def _exchange(session: Session, options: SwapOptions, *, action: str, from_phase: str, open_window: bool,
              standby_guard_after: str, direction: str, guard_names: frozenset[str]) -> None:
    """The one short lock: the log's tail replayed, live and shadow trade places, dependents follow, the
    capture moves to the new live table when a window opens; the state moves from ``from_phase`` to swapped.
    The dependents are read once to know what to lock (in the order the application locks them) and again
    once the locks are granted (nothing can start depending on allocations then): what is re-pointed is what
    the second reading found, and when it names a table the locks missed, the exchange starts again; so it
    does when the tail left under the lock is longer than ``swap_tail_rows`` or a row it must lock is held."""
    why = ""
    for attempt in range(1, EXCHANGE_ATTEMPTS + 1):
        try:
            _exchange_once(session, options, action=action, from_phase=from_phase, open_window=open_window,
                           standby_guard_after=standby_guard_after, direction=direction, guard_names=guard_names)
            return
        except _DependentsChanged as changed:
            why = f"{changed} began to depend on {LIVE} while the exchange waited for its locks"
        except _TailTooLong as grown:
            why = f"{grown} log rows were waiting once the locks were granted (more than swap_tail_rows)"
        except Exception as exc:
            if failures.sqlstate(exc) != "55P03":
                raise
            why = f"a row the tail's replay locks was held for more than {TAIL_LOCK_TIMEOUT}"
        log.warning("%s: %s (attempt %d/%d): released, catching up, starting again", action, why, attempt,
                    EXCHANGE_ATTEMPTS)
        changelog.replay_until(session, options.tail_rows)
    raise CommandError(f"{action}: the exchange was released {EXCHANGE_ATTEMPTS} times ({why}); nothing was "
                       "changed: run it again (at a quieter moment, or with a larger -x swap_tail_rows)")


def _exchange_once(session: Session, options: SwapOptions, *, action: str, from_phase: str, open_window: bool,
                   standby_guard_after: str, direction: str, guard_names: frozenset[str]) -> None:
    with session.transaction():
        # The replay's lock is taken only once the table locks are granted: while the exchange waits for them
        # (retries and pauses included) the followers go on replaying.
        changelog.preempt_followers(session)
        expected = dependents.find(session)
        take(session, locks.online_exchange(expected.tables), action=f"{action}: exchange",
             restore_lock_timeout=TAIL_LOCK_TIMEOUT)
        locked = time.perf_counter()
        changelog.take_replay_lock(session)  # a follower waiting behind these locks is cancelled, not waited for
        deps = dependents.find(session)
        missed = sorted(set(deps.tables) - set(expected.tables))
        if missed:
            raise _DependentsChanged(", ".join(missed))
        if not changelog.tail_fits(session, options.tail_rows):
            raise _TailTooLong(changelog.depth(session).rows)
        refusals.refuse(session, action)  # catalog reads: nothing can start depending on it any more
        likeness.refuse_if_different(session, guard_names, action)
        advance(session, from_phase, SWAPPED, direction=direction, standby_guard=standby_guard_after)
        tail = changelog.replay_in(session)  # READ COMMITTED: each statement reads after the locks were granted
        if changelog.not_capturing(session, LIVE):
            raise _CaptureChanged
        if session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]:
            raise _ConflictsAppeared
        started = time.perf_counter()
        # One round trip for the whole exchange: each statement is catalog work of microseconds, and under the
        # lock a round trip each (dozens, with every dependent carried) cost more than the work itself.
        session.execute(";\n".join([
            *changelog.remove(LIVE),
            f"CREATE SCHEMA {EXCHANGE_SCHEMA}", f"ALTER TABLE {LIVE} SET SCHEMA {EXCHANGE_SCHEMA}",
            f"ALTER TABLE {SHADOW} SET SCHEMA public", f"ALTER TABLE {EXCHANGE_SCHEMA}.allocations SET SCHEMA reserve_swap",
            f"DROP SCHEMA {EXCHANGE_SCHEMA}",
            *deps.repoint(moved_to=SHADOW),
            *(changelog.install(LIVE) if open_window else []),
        ]))
        log.info("%s: exchanged %s and %s (%d log rows replayed, then catalog work: %.1f ms under the lock)",
                 action, LIVE, SHADOW, tail, (time.perf_counter() - started) * 1000)
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
    _refuse_if_not_capturing(session, action)  # a reshaped table was refused just before (likeness)
    started = time.monotonic()
    replayed = changelog.replay_until(session, options.tail_rows)
    queued = changelog.queue_differences(session)
    replayed += changelog.replay_until(session, options.tail_rows)
    log.info("%s: log replayed (%d rows), tables compared row by row (%d differences queued and replayed) in %.1fs",
             action, replayed, queued, time.monotonic() - started)


# Older than the fill: a snapshot whose xmin precedes the transaction that last filled the shadow (%(fill)s).
_OLDER = "age({xmin}) > age((%(fill)s::bigint %% 4294967296)::text::xid)"
# The transactions of this database whose snapshot may predate the fill, by virtual transaction id (as CREATE
# INDEX CONCURRENTLY collects them): what is waited for, each until it ends. Sessions waiting for the
# migration lock hold a snapshot they will drop without reading allocations.
_OLD_TRANSACTIONS = (
    "SELECT v.virtualxid, a.pid, COALESCE(NULLIF(a.application_name, ''), 'no application_name'), "
    "       to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
    "FROM pg_stat_activity a JOIN pg_locks v ON v.pid = a.pid AND v.locktype = 'virtualxid' AND v.granted "
    "  AND v.virtualxid = v.virtualtransaction "
    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' "
    f"  AND a.backend_xmin IS NOT NULL AND {_OLDER.format(xmin='a.backend_xmin')} "
    f"  AND NOT {locks.WAITING_FOR_MIGRATION_LOCK_SQL.format(pid='a.pid')} ORDER BY a.xact_start"
)
# What holds back the xmin of every snapshot taken while it lasts, so that a fresh one looks old too: a
# prepared transaction (no session, no snapshot of its own) or any transaction older than the fill.
_HOLDING_BACK = (
    "SELECT 'prepared transaction ' || quote_literal(gid) || ' (xid ' || transaction || ', prepared ' "
    "       || to_char(prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC, database ' || database || ')' "
    f"FROM pg_prepared_xacts WHERE {_OLDER.format(xmin='transaction')}"
)


def wait_for_old_snapshots(session: Session, options: SwapOptions, *, action: str) -> None:
    """Wait for every snapshot that may predate the shadow's bulk fill (after the exchange it would see the table
    empty or partial: the MVCC caveat of any table rewrite), for at most ``swap_snapshot_wait`` seconds, then
    refuse naming them, with nothing changed.

    As CREATE INDEX CONCURRENTLY does, this database's transactions that may hold such a snapshot are collected
    once and each is waited for until it ends: one that begins later sees the fill, even when a prepared
    transaction older than the fill makes its xmin look old; the refusal names such prepared transactions. A
    hot standby's snapshots are not seen here (issue 30, item 8: left open). (A snapshot newer than the
    fill but older than the last replays sees the rows replayed since it was taken missing: the writes of the
    last moments, which the guard still checks.)"""
    deadline = time.monotonic() + options.snapshot_wait_s
    (fill,) = session.execute("SELECT filled_xid::text FROM reserve_swap.state").fetchone()
    if fill is None:
        return
    waited = {row[0]: row[1:] for row in session.execute(_OLD_TRANSACTIONS, {"fill": fill}).fetchall()}
    while True:
        if waited:
            alive = {row[0] for row in session.execute(
                "SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' AND granted "
                "AND virtualxid = ANY (%s::text[])", (list(waited),)).fetchall()}
            waited = {vxid: seen for vxid, seen in waited.items() if vxid in alive}
        if not waited:
            return
        if time.monotonic() >= deadline:
            old = [f"pid {pid} ({name}, in a transaction since {since} UTC)" for pid, name, since in waited.values()]
            holding = [row[0] for row in session.execute(_HOLDING_BACK, {"fill": fill}).fetchall()]
            raise CommandError(
                f"{action}: {len(old)} snapshot(s) may be older than the shadow's contents and would "
                f"see allocations empty or partial after the exchange: {', '.join(old)}"
                + (f" (their xmin is held back by {', '.join(holding)}: COMMIT PREPARED or ROLLBACK PREPARED it)"
                   if holding else "")
                + ". Nothing was changed; let them end (or end them), then run it again (-x swap_snapshot_wait="
                "SECONDS waits longer).")
        time.sleep(0.1)


def _checked_exchange(session: Session, found: SwapState, guard: guards.Guard, options: SwapOptions, *,
                      action: str, from_phase: str, open_window: bool, standby_guard_after: str,
                      direction: str, guard_names: frozenset[str]) -> None:
    """Catch up, refuse when conflicts remain (before the lock, or when one appears under it), when the capture
    was changed or the two tables' definitions differ beyond their guards (checked again under the lock), wait
    for old snapshots, exchange."""
    with session.transaction():
        session.execute(dependents.KEYS_TO_VALIDATE_SQL)  # machinery an older release built lacks it
        for function in changelog.function_sql():  # and its replay may be an older version (a window lasts days)
            session.execute(function)
        # Grants and table options set since the build are carried, not refused (SHARE UPDATE EXCLUSIVE on the shadow).
        for statement in shadow.grants(session) + shadow.options_to_carry(session):
            session.execute(statement)
        likeness.refuse_if_different(session, guard_names, action)
    catch_up(session, options, action=action)
    if session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]:
        _refuse_conflicts(session, action, guard)
    wait_for_old_snapshots(session, options, action=action)
    changelog.replay_until(session, options.tail_rows)  # what was logged while it waited, then at once the lock
    try:
        _exchange(session, options, action=action, from_phase=from_phase, open_window=open_window,
                  standby_guard_after=standby_guard_after, direction=direction, guard_names=guard_names)
    except _ConflictsAppeared:
        _refuse_conflicts(session, action, guard)
    except _CaptureChanged:
        _refuse_if_not_capturing(session, action)
        raise CommandError(f"{action}: the capture changed while the exchange waited for its lock; nothing was "
                           "changed: run it again") from None


def _guard_names(new_guard: guards.Guard) -> frozenset[str]:
    """What the two tables may differ by: the guards and the index the old guard's table has besides."""
    return frozenset({guards.OLD_GUARD.name, new_guard.name, guards.REDUNDANT_INDEX})


def forward(session: Session, found: SwapState, new_guard: guards.Guard, options: SwapOptions, *,
            action: str) -> None:
    """A built, backfilled shadow becomes the live table."""
    guard = new_guard if found.direction == "upgrade" else guards.OLD_GUARD
    previous = guards.OLD_GUARD.name if found.direction == "upgrade" else new_guard.name
    _checked_exchange(session, found, guard, options, action=action, from_phase=BACKFILLED,
                      open_window=found.direction == "upgrade", standby_guard_after=previous,
                      direction=found.direction, guard_names=_guard_names(new_guard))


def back(session: Session, found: SwapState, new_guard: guards.Guard, options: SwapOptions, *,
         action: str) -> str:
    """Inside the window, the rollback: the previous table, kept in step by the replay, becomes live again."""
    _checked_exchange(session, found, guards.OLD_GUARD, options, action=action, from_phase=WINDOW,
                      open_window=False, standby_guard_after=new_guard.name, direction="downgrade",
                      guard_names=_guard_names(new_guard))
    return settle(session, read(session), action=action)


def settle(session: Session, found: SwapState | None, *, action: str) -> str:
    """After the exchange: validate the re-pointed foreign keys, then open the window or drop the machinery."""
    if found is None or found.phase != SWAPPED:
        raise StateMoved(f"{action}: the online swap is {found.phase if found else 'gone'}, not swapped (another "
                         "run moved it); nothing was changed")
    for table, name in dependents.keys_to_validate(session):  # those NOT VALID before the exchange stay so
        with session.transaction():
            take(session, locks.online_phase("validate repointed", repointed=[table]), action=f"{action}: validating {name}",
                 restore_lock_timeout=session_setting("lock_timeout"))
            session.execute(f'ALTER TABLE {table} VALIDATE CONSTRAINT "{name}"')
            session.execute(f"DELETE FROM {dependents.KEYS_TO_VALIDATE} WHERE table_name = %s AND constraint_name = %s",
                            (table, name))
    if found.direction == "upgrade":
        with session.transaction():
            advance(session, SWAPPED, WINDOW)
            every = changelog.schedule_replay(session)
        follower = (f"the pg_cron job {changelog.CRON_JOB} replays the change log ({every})" if every else
                    "run `reserve swap follow` to keep it in step (pg_cron is not installed here)")
        return (f"{action}: exchanged; the previous table stays in step in {SHADOW} (the window): {follower}; "
                "`alembic downgrade -1` replays and swaps back instantly, `reserve swap finish` closes it")
    return teardown.retire(session, action=action)
