"""The online guard swap: ACCESS EXCLUSIVE on allocations for catalog work only, at any table size.

In order, each phase committed on its own and recorded in ``reserve_swap.state``,
so that an interrupted run is resumed by the same command:

1. **build**: the shadow (reserve.schema.swap.shadow) with its primary key
   only, and the capture (reserve.schema.swap.changelog) on the live table, in
   one transaction under a short bounded SHARE ROW EXCLUSIVE on allocations;
2. **backfill**: rows copied in bulk, in physical order, a range of pages per
   transaction, with no row locks, no index and no guard; the primary key
   built; the log replayed; the other indexes and then the target guard built
   on the filled shadow (one bulk build each, ACCESS EXCLUSIVE on the shadow
   only); the log replayed again; the shadow's foreign keys (NOT VALID, then
   validated) and ANALYZE;
3. **exchange** (reserve.schema.swap.exchange): the log replayed down to a
   small tail, the two tables compared row by row, then under the bounded
   ACCESS EXCLUSIVE lock the tail replayed and the tables trade schemas;
4. **validate** the re-pointed foreign keys (SHARE UPDATE EXCLUSIVE: nobody waits);
5. after an upgrade, the previous table is kept in step by the same replay
   (the window: the rollback is an exchange back, `reserve swap finish` closes
   it); after a downgrade, the table that was live is retired.

Why this order loses nothing. The capture is installed in the transaction
that creates the shadow, under a lock that waits for every writer in flight:
every write that commits after it is in the log, every write before it is in
the snapshot of every copy batch. A copy batch may copy a version that a
later write changes; that write's log row commits after the batch's snapshot
and is replayed after the batch commits (the bulk copy and the replay exclude
each other), and the replay reads the live table with a snapshot newer than
the log row, so the shadow ends with that write or a later one. A row copied
twice (two versions of one id on pages of two batches) was written between
their snapshots, so its id is in the log, and the replay, which deletes
every shadow row of an id before copying the live one, leaves one; what a
replay run during the copy consumed too early is found when the primary key
is built, deleted and logged again. A row deleted after a batch's snapshot is
deleted again by the replay of its log row. Until the
guard is built no stale copy can be refused, so the guard sees the shadow as
the live table was at one moment plus the log replayed: a conflict it
records is a real one. The replay never uses a writer's snapshot, so
REPEATABLE READ and SERIALIZABLE writers, replica-role sessions (the
triggers are ENABLE ALWAYS) and TRUNCATE (a marker) are captured alike. What
no trigger sees (the capture disabled by an operator) is found by the
row-by-row comparison before each exchange, and the exchange refuses while
the capture is not enabled as installed.
"""

from __future__ import annotations

import logging
import time

from alembic.util import CommandError

from reserve.schema import failures, guards, locks
from reserve.schema.options import SwapOptions, session_setting
from reserve.schema.session import Session, take
from reserve.schema.swap import changelog, dependents, exchange, refusals, shadow, teardown
from reserve.schema.swap.state import (
    BACKFILLED,
    BUILDING,
    DROPPABLE,
    LIVE,
    SHADOW,
    SWAPPED,
    WINDOW,
    StateMoved,
    SwapState,
    advance,
    read,
)

log = logging.getLogger("reserve.schema.swap")

# What each step locks is declared once, in reserve.schema.locks.online_phase.
# A batch: a range of the live table's pages (a TID range scan), appended as they are to a shadow with no index
# (kept up row by row, its primary key alone cost the copy three times its own work). In physical order, so
# that the shadow's heap keeps the live one's order (rows loaded by restaurant and time stay together: the
# guard's index, built afterwards, is filled with neighbours, and later scans keep their locality).
_COPY = """
WITH copied AS (INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations
                WHERE ctid >= format('(%%s,0)', %(first)s::bigint)::tid
                  AND ctid < format('(%%s,0)', %(end)s::bigint)::tid RETURNING 1)
SELECT count(*) FROM copied
"""
# Ids the shadow holds twice: a version a replay put there during the copy, then copied again from a later page.
# Every copy of each is deleted, and its id logged for the replay to copy once.
_DEDUPLICATE = """
WITH twice AS (SELECT id FROM reserve_swap.allocations GROUP BY id HAVING count(*) > 1),
     gone AS (DELETE FROM reserve_swap.allocations s USING twice WHERE s.id = twice.id RETURNING s.id),
     queued AS (INSERT INTO reserve_swap.log (allocation_id) SELECT DISTINCT id FROM gone RETURNING 1)
SELECT count(*) FROM queued
"""
# The pages to copy, and which file they are in: rows the live table gets after this are in the log; a
# rewrite (VACUUM FULL, CLUSTER) moves every row, and the backfill starts again from the first page.
_SOURCE = ("SELECT pg_relation_size(%(t)s::regclass) / current_setting('block_size')::int, "
           "pg_relation_filenode(%(t)s::regclass)")


def target_guard(direction: str, new_guard: guards.Guard) -> guards.Guard:
    return new_guard if direction == "upgrade" else guards.OLD_GUARD


def run(session: Session, direction: str, new_guard: guards.Guard, *, action: str) -> str:
    """Move the live table to the guard of ``direction``, resuming whatever an earlier run left; what it did."""
    options = SwapOptions.from_x_options()
    found = read(session)
    if found is not None and found.phase in DROPPABLE["drop"]:  # a table an earlier run left to drop: first
        teardown.drop_retired(session, action=f"{action}: dropping the table an earlier run left")
        found = None
    if found is not None and found.direction == direction:
        return _resume(session, found, new_guard, options, action)
    if found is not None and found.phase == WINDOW and direction == "downgrade":
        return exchange.back(session, found, new_guard, options, action=action)
    if found is not None:
        raise CommandError(
            f"{action}: an online {found.direction} of allocations is in flight (phase: {found.phase}); finish it "
            f"with `alembic {found.direction} {'head' if found.direction == 'upgrade' else '-1'}`"
            + (" or drop it with `reserve swap abort`" if not found.exchanged else "") + ". Nothing was changed.")
    if guards.is_in_place(session, target_guard(direction, new_guard)):
        return f"{target_guard(direction, new_guard).name} is already in place"
    build(session, direction, new_guard, action=action)
    return _resume(session, read(session), new_guard, options, action)


def _resume(session: Session, found: SwapState | None, new_guard: guards.Guard, options: SwapOptions,
            action: str) -> str:
    if found is None:
        raise StateMoved(f"{action}: the online swap's machinery is gone (another run dropped it); nothing was changed")
    if found.phase == BUILDING:
        backfill(session, found, new_guard, options, action=action)
        found = read(session)
    if found is not None and found.phase == BACKFILLED:
        exchange.forward(session, found, new_guard, options, action=action)
        found = read(session)
    if found is not None and found.phase == SWAPPED:
        return exchange.settle(session, found, action=action)
    return f"{action}: the exchange is done; {found.phase if found else 'no swap in flight'}"


def build(session: Session, direction: str, new_guard: guards.Guard, *, action: str) -> None:
    """The shadow, its machinery and the capture, in one transaction: all of it or nothing."""
    target = shadow.for_direction(direction, new_guard)
    with session.transaction():
        refusals.refuse(session, action)
        definition = shadow.statements(session, target)
        take(session, locks.online_phase("build"), action=f"{action}: building the shadow",
             restore_lock_timeout=session_setting("lock_timeout"))
        session.execute(changelog.machinery_sql())
        session.execute(dependents.KEYS_TO_VALIDATE_SQL)
        for function in changelog.function_sql():
            session.execute(function)
        for statement in definition.table:
            session.execute(statement)
        for statement in shadow.grants(session):
            session.execute(statement)
        if not shadow.same_columns(session):
            raise CommandError(f"{action}: the shadow's columns differ from public.allocations'; nothing was changed")
        session.execute("INSERT INTO reserve_swap.state (direction, standby_guard, phase) VALUES (%s, %s, %s)",
                        (direction, target.guard.name, BUILDING))
        for statement in changelog.install(LIVE):
            session.execute(statement)
    log.info("%s: shadow %s created (its guard %s comes once it is filled); every write to %s is logged", action,
             SHADOW, target.guard.name, LIVE)


def backfill(session: Session, found: SwapState, new_guard: guards.Guard, options: SwapOptions, *,
             action: str) -> None:
    """Fill the shadow in bulk, then its guard, then catch up; resumes after the last step committed."""
    started = time.monotonic()
    if found.copied_at is None:
        copy_rows(session, found, options, action=action)
    add_key(session, action=action)
    changelog.replay_until(session)
    add_guard(session, found.direction, new_guard, action=action)
    changelog.replay_until(session)
    add_foreign_keys(session, action=action)
    session.execute(f"ANALYZE {SHADOW}")
    with session.transaction():
        for statement in shadow.comments(session):  # SHARE UPDATE EXCLUSIVE on the shadow only
            session.execute(statement)
        advance(session, BUILDING, BACKFILLED)
    copied = session.execute("SELECT rows_copied FROM reserve_swap.state").fetchone()[0]
    log.info("%s: shadow filled (%d rows copied), its guard built, the log replayed, foreign keys validated, "
             "analyzed in %.1fs", action, copied, time.monotonic() - started)


def copy_rows(session: Session, found: SwapState, options: SwapOptions, *, action: str) -> None:
    """Copy every row, in physical order, a range of pages per transaction, resuming after the last batch
    committed (or from the first page, if the live table has been rewritten since)."""
    copied_total, batches = found.rows_copied, 0
    pages = batch_pages(session, options.batch_rows)
    started = time.monotonic()
    if found.backfill_end_page is not None:
        log.info("%s: resuming the copy after %d rows (copied by an earlier run)", action, copied_total)
    while True:
        copied, more = copy_next_batch(session, pages, action=action)
        batches += 1
        copied_total += copied
        if not more:
            break
        if batches % 20 == 0:
            (next_page, end_page) = session.execute(
                "SELECT backfill_next_page, backfill_end_page FROM reserve_swap.state").fetchone()
            log.info("%s: copy %d rows, page %d of %d, in %.0fs", action, copied_total, next_page,
                     end_page, time.monotonic() - started)
        if options.batch_pause_s:
            time.sleep(options.batch_pause_s)
    with session.transaction():
        session.execute("UPDATE reserve_swap.state SET copied_at = now()")
    log.info("%s: copy done, %d rows in %.1fs", action, copied_total, time.monotonic() - started)


def batch_pages(session: Session, rows: int) -> int:
    """Pages per batch for about ``rows`` rows, from the planner's estimate of rows per page."""
    relpages, reltuples = session.execute("SELECT relpages, reltuples FROM pg_class WHERE oid = %s::regclass",
                                          (LIVE,)).fetchone()
    per_page = reltuples / relpages if relpages > 0 and reltuples > 0 else 50.0
    return max(1, round(rows / per_page))


def add_key(session: Session, *, action: str) -> None:
    """The filled shadow's primary key, one bulk build (ACCESS EXCLUSIVE on the shadow only). An id it finds
    twice is deleted, logged and built again: the replay copies it once. Done already: nothing."""
    if session.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p')",
                       (SHADOW,)).fetchone()[0]:
        return
    started = time.monotonic()
    with session.transaction():
        changelog.take_replay_lock(session)
        key = shadow.primary_key(session)
        take(session, locks.online_phase("key"), action=f"{action}: building the shadow's primary key",
             restore_lock_timeout=session_setting("lock_timeout"))
        try:
            with session.savepoint():
                for statement in key:
                    session.execute(statement)
        except Exception as exc:
            if failures.sqlstate(exc) != "23505":
                raise
            queued = session.execute(_DEDUPLICATE).fetchone()[0]
            log.info("%s: %d ids were copied twice: deleted from the shadow and logged, for the replay", action,
                     queued)
            for statement in key:
                session.execute(statement)
    log.info("%s: the shadow's primary key built in %.1fs", action, time.monotonic() - started)


def add_guard(session: Session, direction: str, new_guard: guards.Guard, *, action: str) -> None:
    """The filled shadow's other indexes and constraints, then its guard, in one transaction under ACCESS
    EXCLUSIVE on the shadow only (the application writes only the log meanwhile). When the guard refuses the
    rows (on the way down: allocations the old guard forbids), they are looked for then, listed, and nothing
    is built: one scan for the pairs only when there are some. Done already: nothing."""
    target = shadow.for_direction(direction, new_guard)
    if session.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s)",
                       (SHADOW, target.guard.name)).fetchone()[0]:
        return
    started = time.monotonic()
    with session.transaction():
        changelog.take_replay_lock(session)
        after_fill = shadow.statements(session, target).after_fill
        take(session, locks.online_phase("guard"), action=f"{action}: building the shadow's guard",
             restore_lock_timeout=session_setting("lock_timeout"))
        for statement in after_fill:
            session.execute(statement)
        try:
            with session.savepoint():
                session.execute(f"ALTER TABLE {SHADOW} ADD CONSTRAINT {target.guard.name} {target.guard.definition}")
        except Exception as exc:
            if failures.sqlstate(exc) != "23P01":
                raise
            found = [f"{a} & {b}" for a, b in session.execute(target.guard.violations_sql(table=SHADOW)).fetchall()]
            raise CommandError(
                f"{action}: allocations written since break {target.guard.name}: {', '.join(found)}. Nothing "
                "more was built; resolve these allocations and run it again, or `reserve swap abort`.") from None
        session.execute("UPDATE reserve_swap.state SET filled_xid = pg_current_xact_id()")
    log.info("%s: the shadow's indexes and %s built in %.1fs", action, target.guard.name, time.monotonic() - started)


def add_foreign_keys(session: Session, *, action: str) -> None:
    """The shadow's foreign keys, once it is filled: added NOT VALID (a brief SHARE ROW EXCLUSIVE on the shadow
    and the tables they reference, as adding any foreign key takes), then validated in one pass that blocks
    nobody. What a failed run already added is not added again."""
    with session.transaction():
        wanted = shadow.foreign_keys(session)
        have = dict(session.execute("SELECT conname, convalidated FROM pg_constraint WHERE conrelid = %s::regclass "
                                    "AND contype = 'f'", (SHADOW,)).fetchall())
        missing = [(name, definition) for name, definition, _ in wanted if name not in have]
        if missing:
            referenced = shadow.referenced_tables(session, LIVE)
            take(session, locks.online_phase("foreign keys", parents=referenced), action=f"{action}: the shadow's keys",
                 restore_lock_timeout=session_setting("lock_timeout"))
            for name, definition in missing:
                session.execute(f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition} NOT VALID')
    for name, _, validated in wanted:
        if validated and not have.get(name):
            with session.transaction():
                take(session, locks.online_phase("validate shadow"), action=f"{action}: validating {name}",
                     restore_lock_timeout=session_setting("lock_timeout"))
                session.execute(f'ALTER TABLE {SHADOW} VALIDATE CONSTRAINT "{name}"')


def copy_next_batch(session: Session, pages: int, *, action: str) -> tuple[int, bool]:
    """The ``pages`` pages after the last batch committed (the state row records where that ended): (rows
    copied, whether pages remain). No row locks: a version a later write changes is settled by
    the replay of that write's log row, which never runs beside a copy batch."""
    with session.transaction():
        changelog.take_replay_lock(session)
        session.execute(f"LOCK TABLE {LIVE} IN ACCESS SHARE MODE")  # its shape holds until this batch commits
        shadow.refuse_if_reshaped(session, action)
        first, end = _next_pages(session, pages, action)
        if first >= end:
            return 0, False
        (copied,) = session.execute(_COPY, {"first": first, "end": min(first + pages, end)}).fetchone()
        session.execute("UPDATE reserve_swap.state SET backfill_next_page = %s, rows_copied = rows_copied + %s",
                        (min(first + pages, end), copied))
        return copied, first + pages < end


def _next_pages(session: Session, pages: int, action: str) -> tuple[int, int]:
    """(first page of the next batch, the page where the copy ends); recorded at the first batch, and again
    from the first page when the live table's file has changed (a rewrite moved every row)."""
    next_page, end_page, filenode = session.execute(
        "SELECT backfill_next_page, backfill_end_page, source_filenode FROM reserve_swap.state FOR UPDATE").fetchone()
    size, current = session.execute(_SOURCE, {"t": LIVE}).fetchone()
    if end_page is not None and filenode == current:
        return next_page, end_page
    if end_page is not None:
        log.warning("%s: public.allocations was rewritten during the copy: copying again from its first page "
                    "into an empty shadow", action)
        session.execute(f"TRUNCATE {SHADOW}")
    session.execute("UPDATE reserve_swap.state SET backfill_next_page = 0, backfill_end_page = %s, "
                    "source_filenode = %s, rows_copied = 0", (size, current))
    return 0, size
