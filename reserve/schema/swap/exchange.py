"""The exchange: live and standby trade places under one bounded ACCESS EXCLUSIVE lock, catalog work only.

Under the lock: drop the mirror's triggers from the table that leaves, move
it to a side schema, move the standby into ``public``, move the first into
``reserve_swap``, re-point every dependent (reserve.schema.swap.dependents),
and, when a window opens, put the mirror on the new live table. Nothing
reads or writes rows there, so the hold does not grow with the table. Before
it: the standby's recorded conflicts are retried, and any that remain stop
the exchange, listing the allocation ids, with nothing changed.

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

from reserve.schema import failures, guards
from reserve.schema.options import LockPolicy, session_setting
from reserve.schema.session import LockGiveUp, Session, take
from reserve.schema.swap import dependents, mirror
from reserve.schema.swap.state import (
    EXCHANGE_SCHEMA,
    LIVE,
    PENDING,
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
MACHINERY_TABLES = (STANDBY, PENDING, "reserve_swap.conflicts", "reserve_swap.state")
# Dropping the standby removes its foreign keys' triggers from the tables they reference.
DROP_LOCKS = {**dict.fromkeys(MACHINERY_TABLES, AE), "public.bookings": AE, "public.restaurants": AE}


def record_conflict(session: Session, allocation: str, exc: BaseException) -> None:
    error = failures.database_error(exc)
    session.execute(
        "INSERT INTO reserve_swap.conflicts (allocation_id, sqlstate, detail) VALUES (%s, %s, %s) "
        "ON CONFLICT (allocation_id) DO UPDATE SET sqlstate = EXCLUDED.sqlstate, detail = EXCLUDED.detail, "
        "recorded_at = now()",
        (allocation, failures.sqlstate(exc) or "XX000",
         (getattr(getattr(error, "diag", None), "message_primary", None) or str(exc)).splitlines()[0][:500]))


def resync(session: Session, guard_name: str) -> int:
    """Copy again every row recorded as a conflict (its partner may have moved since); the conflicts left."""
    ids = [row[0] for row in session.execute("SELECT allocation_id::text FROM reserve_swap.conflicts").fetchall()]
    for allocation in ids:
        with session.transaction():
            session.execute(f"SET CONSTRAINTS reserve_swap.{guard_name} IMMEDIATE")
            try:
                with session.savepoint():
                    session.execute("DELETE FROM reserve_swap.allocations WHERE id = %s", (allocation,))
                    session.execute(
                        "WITH current AS (SELECT * FROM public.allocations WHERE id = %s FOR UPDATE) "
                        "INSERT INTO reserve_swap.allocations SELECT * FROM current", (allocation,))
                    session.execute("DELETE FROM reserve_swap.conflicts WHERE allocation_id = %s", (allocation,))
            except Exception as exc:  # noqa: BLE001 (still refused: recorded again, with today's reason)
                record_conflict(session, allocation, exc)
    return session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]


class _ConflictsAppeared(Exception):
    """The mirror recorded a conflict between the last check and the exchange's lock: refused, no lock held."""


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
    """The one short lock: live and standby trade places; dependents follow; the state says what happened."""
    with session.transaction():
        deps = dependents.find(session)
        take(session, {LIVE: AE, STANDBY: AE, PENDING: AE, **dict.fromkeys(deps.tables, AE)},
             action=f"{action}: exchange", restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        if session.execute("SELECT count(*) FROM reserve_swap.conflicts").fetchone()[0]:
            raise _ConflictsAppeared
        started = time.perf_counter()
        for statement in mirror.remove(LIVE):
            session.execute(statement)
        for statement in (f"CREATE SCHEMA {EXCHANGE_SCHEMA}", f"ALTER TABLE {LIVE} SET SCHEMA {EXCHANGE_SCHEMA}",
                          f"ALTER TABLE {STANDBY} SET SCHEMA public",
                          f"ALTER TABLE {EXCHANGE_SCHEMA}.allocations SET SCHEMA reserve_swap",
                          f"DROP SCHEMA {EXCHANGE_SCHEMA}"):
            session.execute(statement)
        for statement in deps.repoint(moved_to=STANDBY):
            session.execute(statement)
        if open_window:
            for statement in mirror.install(standby_guard_after):
                session.execute(statement)
        session.execute("UPDATE reserve_swap.state SET phase = %s, direction = %s, standby_guard = %s, "
                        "swapped_at = now()", (SWAPPED, direction, standby_guard_after))
        log.info("%s: exchanged %s and %s (catalog work: %.1f ms under the lock)", action, LIVE, STANDBY,
                 (time.perf_counter() - started) * 1000)
    log_hold(action, "exchange", locked, f"{LIVE} and its dependents")


def _checked_exchange(session: Session, found: SwapState, guard: guards.Guard, *, action: str, open_window: bool,
                      standby_guard_after: str, direction: str) -> None:
    """Retry the recorded conflicts, refuse when any remain (before the lock, or when one appears under it)."""
    if resync(session, found.standby_guard):
        _refuse_conflicts(session, action, guard)
    try:
        _exchange(session, action=action, open_window=open_window, standby_guard_after=standby_guard_after,
                  direction=direction)
    except _ConflictsAppeared:
        _refuse_conflicts(session, action, guard)


def forward(session: Session, found: SwapState, new_guard: guards.Guard, *, action: str) -> None:
    """A built, backfilled standby becomes the live table."""
    guard = new_guard if found.direction == "upgrade" else guards.OLD_GUARD
    previous = guards.OLD_GUARD.name if found.direction == "upgrade" else new_guard.name
    _checked_exchange(session, found, guard, action=action, open_window=found.direction == "upgrade",
                      standby_guard_after=previous, direction=found.direction)


def back(session: Session, found: SwapState, new_guard: guards.Guard, *, action: str) -> str:
    """Inside the window, the rollback: the previous table, kept in step, becomes live again."""
    _checked_exchange(session, found, guards.OLD_GUARD, action=action, open_window=False,
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
        return (f"{action}: exchanged; the previous table stays in step in {STANDBY} (the window): "
                "`alembic downgrade -1` swaps back instantly, `reserve swap finish` closes it")
    return retire(session, action=action)


def retire(session: Session, *, action: str) -> str:
    """After a downgrade: the table that left is emptied (under its own lock only, so that its files go while
    nobody waits), then dropped with the machinery if one short lock attempt allows it; else it is left to
    `reserve swap finish` (or the next revision run).

    Dropping it removes its foreign keys, which takes ACCESS EXCLUSIVE on bookings and restaurants for an
    instant: behind any long report on bookings that waits, and every booking read queues behind the wait. The
    emergency rollback does not retry that; an emptied table with no mirror costs an index probe per deleted
    booking (its foreign keys cascade) and nothing else, and is gone at the next quiet moment.
    """
    with session.transaction():
        session.execute("UPDATE reserve_swap.state SET phase = %s, retired_at = now()", (RETIRED,))
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
    """Closing a window, first step: the mirror off the live table and the state retired, under a bounded
    ACCESS EXCLUSIVE on allocations for catalog work only. From here the previous table is out of step (the
    rollback is a rebuild) and nothing public touches it."""
    with session.transaction():
        take(session, {LIVE: AE, STANDBY: AE, PENDING: AE}, action=f"{action}: detaching the mirror",
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        for statement in mirror.remove(LIVE):
            session.execute(statement)
        session.execute("UPDATE reserve_swap.state SET phase = %s, retired_at = now()", (RETIRED,))
    log_hold(action, "detaching the mirror", locked, LIVE)


def drop_retired(session: Session, *, action: str, policy: LockPolicy | None = None) -> None:
    """A retired table (no mirror: nothing public writes to it) is emptied first, under its own lock, so that
    the drop that follows holds bookings and restaurants for catalog work only, not while its files go."""
    with session.transaction():
        take(session, {STANDBY: AE, PENDING: AE}, action=f"{action}: emptying the table that left", policy=policy,
             restore_lock_timeout=session_setting("lock_timeout"))
        session.execute(f"TRUNCATE {STANDBY}, {PENDING}")
    close(session, action=action, policy=policy)


def close(session: Session, *, action: str, policy: LockPolicy | None = None) -> None:
    """Drop the mirror from the live table and the whole machinery (the standby with it), in one transaction
    with bounded lock attempts: interrupted, or given up (LockGiveUp), it has changed nothing, so a window is
    never left open without its mirror. Cheap under its locks only when the standby is empty or small
    (drop_retired empties it first; an abort drops what the backfill copied so far)."""
    mirrored = mirror.installed_on(session, LIVE)
    with session.transaction():
        wanted = {**({LIVE: AE} if mirrored else {}), **DROP_LOCKS}
        take(session, wanted, action=f"{action}: dropping the standby and the mirror", policy=policy,
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        for statement in mirror.remove(LIVE):
            session.execute(statement)
        session.execute("DROP SCHEMA reserve_swap CASCADE")
    log_hold(action, "dropping the machinery", locked,
             ", ".join([LIVE] * mirrored + ["public.bookings", "public.restaurants"]))


def finish(session: Session, *, action: str = "reserve swap finish") -> str:
    """Close an open window: the previous table and the mirror go; the rollback is then a rebuild."""
    found = read(session)
    if found is None:
        raise CommandError(f"{action}: no swap window is open: nothing to finish")
    if found.phase == RETIRED:
        drop_retired(session, action=action)
        return f"{action}: the table left in {STANDBY} is dropped, with the swap's machinery"
    if found.phase != WINDOW:
        raise CommandError(f"{action}: the online {found.direction} is still in flight (phase: {found.phase}); "
                           "finish it first, or `reserve swap abort` before its exchange")
    detach(session, action=action)
    drop_retired(session, action=action)
    return f"{action}: the window is closed; {STANDBY} and the mirror are dropped"


def abort(session: Session, *, action: str = "reserve swap abort") -> str:
    """Drop a swap that has not exchanged yet: the live table is untouched, the standby and the mirror go."""
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
