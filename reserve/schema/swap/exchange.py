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

from reserve.schema import guards, locks
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

# How often the exchange starts again when something began to depend on allocations between the reading that
# chose its locks and the moment they were granted (a view created meanwhile, say).
DEPENDENTS_ATTEMPTS = 3


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


def _exchange(session: Session, *, action: str, from_phase: str, open_window: bool, standby_guard_after: str,
              direction: str, guard_names: frozenset[str]) -> None:
    """The one short lock: the log's tail replayed, live and shadow trade places, dependents follow, the
    capture moves to the new live table when a window opens; the state moves from ``from_phase`` to swapped.
    The dependents are read once to know what to lock (in the order the application locks them) and again
    once the locks are granted (nothing can start depending on allocations then): what is re-pointed is what
    the second reading found, and when it names a table the locks missed, the exchange starts again."""
    for attempt in range(1, DEPENDENTS_ATTEMPTS + 1):
        try:
            _exchange_once(session, action=action, from_phase=from_phase, open_window=open_window,
                           standby_guard_after=standby_guard_after, direction=direction, guard_names=guard_names)
            return
        except _DependentsChanged as changed:
            log.warning("%s: %s began to depend on %s while the exchange waited for its locks (attempt %d/%d): "
                        "released, starting again", action, changed, LIVE, attempt, DEPENDENTS_ATTEMPTS)
    raise CommandError(f"{action}: what depends on {LIVE} kept changing while the exchange waited for its locks; "
                       "nothing was changed: run it again")


def _exchange_once(session: Session, *, action: str, from_phase: str, open_window: bool, standby_guard_after: str,
                   direction: str, guard_names: frozenset[str]) -> None:
    with session.transaction():
        session.execute(changelog.replay_lock_sql())  # no replayer (pg_cron, `swap follow`) is left to wait for
        expected = dependents.find(session)
        take(session, locks.online_exchange(expected.tables), action=f"{action}: exchange",
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        deps = dependents.find(session)
        missed = sorted(set(deps.tables) - set(expected.tables))
        if missed:
            raise _DependentsChanged(", ".join(missed))
        refusals.refuse(session, action)  # catalog reads: nothing can start depending on it any more
        likeness.refuse_if_different(session, guard_names, action)
        advance(session, from_phase, SWAPPED, direction=direction, standby_guard=standby_guard_after)
        tail = changelog.replay_in(session)
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
                      action: str, from_phase: str, open_window: bool, standby_guard_after: str,
                      direction: str, guard_names: frozenset[str]) -> None:
    """Catch up, refuse when conflicts remain (before the lock, or when one appears under it), when the capture
    was changed or the two tables' definitions differ beyond their guards (checked again under the lock), wait
    for old snapshots, exchange."""
    with session.transaction():
        session.execute(dependents.KEYS_TO_VALIDATE_SQL)  # machinery an older release built lacks it
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
        _exchange(session, action=action, from_phase=from_phase, open_window=open_window,
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
