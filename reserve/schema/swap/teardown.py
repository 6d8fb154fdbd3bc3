"""The online swap's teardown: the table that left retired, the window closed, the machinery dropped.

Three ways out, each checked against the state row under its own locks
(reserve.schema.swap.state.advance and expect), so that a run acting on a stale
reading changes nothing:

- after a downgrade (or the exchange back inside the window) the table that
  left is **retired**: emptied under its own lock, then dropped with the
  machinery when one short lock attempt on bookings and restaurants allows;
- `reserve swap finish` closes the window: the capture comes off the live
  table (**detached**: the previous table is out of step from here), then the
  previous table is emptied and dropped the same way;
- `reserve swap abort` drops a swap that has not exchanged yet.
"""

from __future__ import annotations

import logging
import time

from alembic.util import CommandError

from reserve.schema import locks
from reserve.schema.options import LockPolicy, session_setting
from reserve.schema.session import LockGiveUp, Session, take
from reserve.schema.swap import changelog, shadow
from reserve.schema.swap.holds import log_hold
from reserve.schema.swap.state import (
    DETACHED,
    DROPPABLE,
    LIVE,
    LOG,
    RETIRED,
    SHADOW,
    SWAPPED,
    WINDOW,
    advance,
    ensure_phase_check,
    expect,
    read,
)

log = logging.getLogger("reserve.schema.swap")



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
        advance(session, SWAPPED, RETIRED)
        changelog.unschedule_replay(session)  # nothing is replayed into the table that left (after the lock)
    once = LockPolicy.from_x_options()
    try:
        drop_retired(session, action=action, policy=LockPolicy(once.lock_timeout, attempts=1, pause_s=0))
    except LockGiveUp as exc:
        emptied = "emptied" if exists_empty(session) else "not emptied yet (something held it)"
        log.warning("%s: the table that left is %s, not dropped (%s); `reserve swap finish` drops it", action,
                    emptied, exc)
        return (f"{action}: exchanged; the table that left is {emptied} in {SHADOW}, to be dropped by "
                "`reserve swap finish` when nothing holds bookings or restaurants for a moment")
    return f"{action}: exchanged; the table that left and the swap's machinery are dropped"


def exists_empty(session: Session) -> bool:
    return session.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {SHADOW})").fetchone()[0]


def detach(session: Session, *, action: str) -> None:
    """Closing a window, first step: the capture off the live table and the state detached, under a bounded
    ACCESS EXCLUSIVE on allocations for catalog work only. From here the previous table is out of step (the
    rollback is a rebuild) and nothing public touches it."""
    with session.transaction():
        take(session, locks.online_phase("detach"), action=f"{action}: detaching the capture",
             restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        ensure_phase_check(session)
        advance(session, WINDOW, DETACHED)
        for statement in changelog.remove(LIVE):
            session.execute(statement)
    log_hold(action, "detaching the capture", locked, LIVE)


def drop_retired(session: Session, *, action: str, policy: LockPolicy | None = None) -> None:
    """A retired or detached table (no capture: nothing public writes to it) is emptied first, under its own
    lock, so that the drop that follows holds bookings and restaurants for catalog work only, not while its
    files go."""
    with session.transaction():
        take(session, locks.online_phase("empty"), action=f"{action}: emptying the table that left", policy=policy,
             restore_lock_timeout=session_setting("lock_timeout"))
        expect(session, DROPPABLE["drop"], doing=action)
        session.execute(f"TRUNCATE {SHADOW}, {LOG}")
    close(session, DROPPABLE["drop"], action=action, policy=policy)


def close(session: Session, allowed: tuple[str, ...], *, action: str, policy: LockPolicy | None = None) -> None:
    """Drop the capture from the live table and the whole machinery (the shadow with it), in one transaction
    with bounded lock attempts, when the swap is in one of the ``allowed`` phases under those locks:
    interrupted, given up (LockGiveUp) or refused (StateMoved), it has changed nothing, so a window is never
    left open without its capture. Cheap under its locks only when the shadow is empty or small
    (drop_retired empties it first; an abort drops what the backfill copied so far)."""
    captured = changelog.installed_on(session, LIVE)
    with session.transaction():
        # Dropping the shadow removes its foreign keys' triggers from the tables they reference (none yet before
        # the backfill adds them: an abort during the copy locks no public table but allocations).
        parents = shadow.referenced_tables(session, SHADOW)
        take(session, locks.online_phase("drop", captured=captured, parents=parents), policy=policy,
             action=f"{action}: dropping the shadow and the capture", restore_lock_timeout=session_setting("lock_timeout"))
        locked = time.perf_counter()
        expect(session, allowed, doing=action)
        if changelog.installed_on(session, LIVE) and not captured:  # installed since it looked: not locked
            raise CommandError(f"{action}: the capture was installed on {LIVE} meanwhile; nothing was changed: "
                               "run it again")
        for statement in changelog.remove(LIVE):
            session.execute(statement)
        changelog.unschedule_replay(session)
        session.execute("DROP SCHEMA reserve_swap CASCADE")
    log_hold(action, "dropping the machinery", locked, ", ".join([LIVE] * captured + parents))


def finish(session: Session, *, action: str = "reserve swap finish") -> str:
    """Close an open window: the previous table and the capture go; the rollback is then a rebuild."""
    found = read(session)
    if found is None:
        raise CommandError(f"{action}: no swap window is open: nothing to finish")
    if found.phase in DROPPABLE["drop"]:
        drop_retired(session, action=action)
        return f"{action}: the table left in {SHADOW} is dropped, with the swap's machinery"
    if found.phase != WINDOW:
        raise CommandError(f"{action}: the online {found.direction} is still in flight (phase: {found.phase}); "
                           "finish it first, or `reserve swap abort` before its exchange")
    changelog.replay_until(session)  # conflicts and figures up to date to the last moment of the window
    detach(session, action=action)
    drop_retired(session, action=action)
    return f"{action}: the window is closed; {SHADOW} and the capture are dropped"


def abort(session: Session, *, action: str = "reserve swap abort") -> str:
    """Drop a swap that has not exchanged yet: the live table is untouched, the shadow and the capture go."""
    found = read(session)
    if found is None:
        raise CommandError(f"{action}: no swap is in flight: nothing to abort")
    if found.exchanged:
        raise CommandError(f"{action}: the exchange has happened already (phase: {found.phase}); "
                           + ("close it with `reserve swap finish`" if found.phase in (WINDOW, *DROPPABLE["drop"])
                              else "finish it with the same alembic command"))
    close(session, DROPPABLE["abort"], action=action)
    return f"{action}: the online {found.direction} is dropped; {LIVE} is as it was"
