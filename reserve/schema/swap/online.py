"""The online guard swap: ACCESS EXCLUSIVE on allocations for catalog work only, at any table size.

In order, each phase committed on its own and recorded in ``reserve_swap.state``,
so that an interrupted run is resumed by the same command:

1. **build**: the standby (reserve.schema.swap.standby) with the target guard
   from the start, and the mirror (reserve.schema.swap.mirror) on the live
   table; a short bounded lock (SHARE ROW EXCLUSIVE) for its triggers;
2. **backfill**: rows copied in physical order, a range of pages per
   transaction, each batch locking its source rows (FOR UPDATE) so that a
   concurrent delete or update can never be overwritten by an older copy
   (rows written after the backfill began are the mirror's); then the
   standby's foreign keys (NOT VALID, then validated) and ANALYZE;
3. **exchange** (reserve.schema.swap.exchange): under the bounded ACCESS
   EXCLUSIVE lock, the two tables trade schemas and every dependent is
   re-pointed: renames and catalog updates only, whatever the row count;
4. **validate** the re-pointed foreign keys (SHARE UPDATE EXCLUSIVE: nobody waits);
5. after an upgrade, the previous table stays in step (the window: the
   rollback is then an exchange back, `reserve swap finish` closes it); after a
   downgrade, the table that was live is retired: dropped with the machinery
   at once when a short lock attempt allows, else emptied and dropped later.
"""

from __future__ import annotations

import logging
import time

from alembic.util import CommandError

from reserve.schema import failures, guards
from reserve.schema.options import LockPolicy, SwapOptions, session_setting
from reserve.schema.session import RETRIED, Session, take
from reserve.schema.swap import dependents, exchange, mirror, standby
from reserve.schema.swap.state import (
    BACKFILLED,
    BUILDING,
    LIVE,
    RETIRED,
    STANDBY,
    SWAPPED,
    WINDOW,
    SwapState,
    read,
)

log = logging.getLogger("reserve.schema.swap")

SRE = "SHARE ROW EXCLUSIVE"
# The mirror's triggers go on the live table: SHARE ROW EXCLUSIVE, briefly, to build. (The standby's foreign
# keys, which put their triggers on the tables they reference, come after the backfill.)
BUILD_LOCKS = {LIVE: SRE}
# A batch: a range of the live table's pages (a TID range scan), its rows locked. In physical order, so that
# the standby's heap keeps the live one's order (rows loaded by restaurant and time stay together: the guard's
# index is filled with neighbours, and later scans and builds keep their locality).
_BATCH = ("SELECT * FROM public.allocations WHERE ctid >= format('(%%s,0)', %(first)s::bigint)::tid "
          "AND ctid < format('(%%s,0)', %(end)s::bigint)::tid FOR UPDATE")
# A row already in the standby was copied there by the mirror, from a commit before this batch's snapshot (a
# later one waits for the batch's row lock): skipped. A rare race with a commit between the snapshot and the
# row lock is a unique violation, and the batch is copied again row by row.
_COPY = f"""
WITH batch AS ({_BATCH}),
     copied AS (INSERT INTO reserve_swap.allocations SELECT * FROM batch b
                WHERE NOT EXISTS (SELECT 1 FROM reserve_swap.allocations s WHERE s.id = b.id) RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM copied)
"""
# The pages to copy, and which file they are in: rows the live table gets after this are the mirror's; a
# rewrite (VACUUM FULL, CLUSTER) moves every row, and the backfill starts again from the first page.
_SOURCE = ("SELECT pg_relation_size(%(t)s::regclass) / current_setting('block_size')::int, "
           "pg_relation_filenode(%(t)s::regclass)")


def target_guard(direction: str, new_guard: guards.Guard) -> guards.Guard:
    return new_guard if direction == "upgrade" else guards.OLD_GUARD


def run(session: Session, direction: str, new_guard: guards.Guard, *, action: str) -> str:
    """Move the live table to the guard of ``direction``, resuming whatever an earlier run left; what it did."""
    options = SwapOptions.from_x_options()
    found = read(session)
    if found is not None and found.phase == RETIRED:  # an earlier rollback's table, left to drop: drop it first
        exchange.drop_retired(session, action=f"{action}: dropping the table an earlier run left")
        found = None
    if found is not None and found.direction == direction:
        return _resume(session, found, new_guard, options, action)
    if found is not None and found.phase == WINDOW and direction == "downgrade":
        return exchange.back(session, found, new_guard, action=action)
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
    assert found is not None
    if found.phase == BUILDING:
        backfill(session, found, options, action=action)
        found = read(session)
    if found is not None and found.phase == BACKFILLED:
        exchange.forward(session, found, new_guard, action=action)
        found = read(session)
    if found is not None and found.phase == SWAPPED:
        return exchange.settle(session, found, action=action)
    return f"{action}: the exchange is done; {found.phase if found else 'no swap in flight'}"


def build(session: Session, direction: str, new_guard: guards.Guard, *, action: str) -> None:
    """The standby, its machinery and the mirror, in one transaction: all of it or nothing."""
    target = standby.for_direction(direction, new_guard)
    with session.transaction():
        found = dependents.find(session)
        if found.unsupported:
            raise CommandError(f"{action}: the online swap cannot re-point {', '.join(found.unsupported)}, which "
                               "depend on public.allocations; nothing was changed. Use -x swap_method=locked.")
        try:
            ddl = standby.statements(session, target)
        except standby.UnsupportedTable as exc:
            raise CommandError(f"{action}: the online swap cannot copy public.allocations exactly ({exc}); nothing "
                               "was changed. Use -x swap_method=locked.") from None
        take(session, BUILD_LOCKS, action=f"{action}: building the standby",
             restore_lock_timeout=session_setting("lock_timeout"))
        session.execute(mirror.machinery_sql())
        for function in mirror.function_sql():
            session.execute(function)
        for statement in ddl:
            session.execute(statement)
        for statement in standby.grants(session):
            session.execute(statement)
        if not standby.same_columns(session):
            raise CommandError(f"{action}: the standby's columns differ from public.allocations'; nothing was changed")
        session.execute("INSERT INTO reserve_swap.state (direction, standby_guard, phase) VALUES (%s, %s, %s)",
                        (direction, target.guard.name, BUILDING))
        for statement in mirror.install(target.guard.name):
            session.execute(statement)
    log.info("%s: standby %s built with %s; the mirror copies every committed write into it", action, STANDBY,
             target.guard.name)


def backfill(session: Session, found: SwapState, options: SwapOptions, *, action: str) -> None:
    """Copy every row, in physical order, a range of pages per transaction, resuming after the last batch
    committed (or from the first page, if the live table has been rewritten since)."""
    copied_total, batches = found.rows_copied, 0
    pages = batch_pages(session, options.batch_rows)
    started = time.monotonic()
    if found.backfill_end_page is not None:
        log.info("%s: resuming the backfill after %d rows (copied by an earlier run)", action, copied_total)
    while True:
        _, copied, more = copy_next_batch(session, found.standby_guard, pages, action=action)
        batches += 1
        copied_total += copied
        if not more:
            break
        if batches % 20 == 0:
            (next_page, end_page) = session.execute(
                "SELECT backfill_next_page, backfill_end_page FROM reserve_swap.state").fetchone()
            log.info("%s: backfill %d rows copied, page %d of %d, in %.0fs", action, copied_total, next_page,
                     end_page, time.monotonic() - started)
        if options.batch_pause_s:
            time.sleep(options.batch_pause_s)
    add_foreign_keys(session, action=action)
    session.execute(f"ANALYZE {STANDBY}")
    with session.transaction():
        session.execute("UPDATE reserve_swap.state SET phase = %s, backfilled_at = now()", (BACKFILLED,))
    log.info("%s: backfill done, %d rows copied in %.1fs; foreign keys validated; standby analyzed", action,
             copied_total, time.monotonic() - started)


def batch_pages(session: Session, rows: int) -> int:
    """Pages per batch for about ``rows`` rows, from the planner's estimate of rows per page."""
    relpages, reltuples = session.execute("SELECT relpages, reltuples FROM pg_class WHERE oid = %s::regclass",
                                          (LIVE,)).fetchone()
    per_page = reltuples / relpages if relpages > 0 and reltuples > 0 else 50.0
    return max(1, round(rows / per_page))


def add_foreign_keys(session: Session, *, action: str) -> None:
    """The standby's foreign keys, once it is filled: added NOT VALID (a brief SHARE ROW EXCLUSIVE on the standby
    and the tables they reference, as adding any foreign key takes), then validated in one pass that blocks
    nobody. What a failed run already added is not added again."""
    with session.transaction():
        wanted = standby.foreign_keys(session)
        have = dict(session.execute("SELECT conname, convalidated FROM pg_constraint WHERE conrelid = %s::regclass "
                                    "AND contype = 'f'", (STANDBY,)).fetchall())
        missing = [(name, definition) for name, definition in wanted if name not in have]
        if missing:
            referenced = [row[0] for row in session.execute(
                "SELECT DISTINCT confrelid::regclass::text FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND contype = 'f'", (LIVE,)).fetchall()]
            take(session, {STANDBY: SRE, **dict.fromkeys(referenced, SRE)}, action=f"{action}: the standby's keys",
                 restore_lock_timeout=session_setting("lock_timeout"))
            for name, definition in missing:
                session.execute(f'ALTER TABLE {STANDBY} ADD CONSTRAINT "{name}" {definition} NOT VALID')
    for name, _ in wanted:
        if not have.get(name):
            with session.transaction():
                take(session, {STANDBY: "SHARE UPDATE EXCLUSIVE"}, action=f"{action}: validating {name}",
                     restore_lock_timeout=session_setting("lock_timeout"))
                session.execute(f'ALTER TABLE {STANDBY} VALIDATE CONSTRAINT "{name}"')


def copy_next_batch(session: Session, guard_name: str, pages: int, *, action: str) -> tuple[int, int, bool]:
    """The ``pages`` pages after the last batch committed (the state row records where that ended): (rows
    selected, rows copied, whether pages remain)."""
    policy = LockPolicy.from_x_options()
    for attempt in range(1, policy.attempts + 1):
        try:
            with session.transaction():
                first, end = _next_pages(session, pages, action)
                if first >= end:
                    return 0, 0, False
                session.execute(f"SET CONSTRAINTS reserve_swap.{guard_name} IMMEDIATE")
                selected, copied = session.execute(_COPY, {"first": first, "end": min(first + pages, end)}).fetchone()
                _advance(session, min(first + pages, end), copied)
                return selected, copied, first + pages < end
        except Exception as exc:  # noqa: BLE001 (sorted out by SQLSTATE just below)
            state = failures.sqlstate(exc)
            if state and state.startswith("23"):
                return _copy_rows_one_by_one(session, guard_name, pages, action)
            if state not in RETRIED or attempt == policy.attempts:
                raise
            log.warning("%s: a backfill batch %s (attempt %d/%d)", action,
                        "waited longer than lock_timeout for a row lock" if state == "55P03" else
                        "was cancelled to break a deadlock with an application transaction", attempt, policy.attempts)
            time.sleep(policy.pause_s)
    raise AssertionError("unreachable")


def _next_pages(session: Session, pages: int, action: str) -> tuple[int, int]:
    """(first page of the next batch, the page where the backfill ends); recorded at the first batch, and again
    from the first page when the live table's file has changed (a rewrite moved every row)."""
    next_page, end_page, filenode = session.execute(
        "SELECT backfill_next_page, backfill_end_page, source_filenode FROM reserve_swap.state FOR UPDATE").fetchone()
    size, current = session.execute(_SOURCE, {"t": LIVE}).fetchone()
    if end_page is not None and filenode == current:
        return next_page, end_page
    if end_page is not None:
        log.warning("%s: public.allocations was rewritten during the backfill: copying again from its first page "
                    "(rows already in the standby are skipped)", action)
    session.execute("UPDATE reserve_swap.state SET backfill_next_page = 0, backfill_end_page = %s, "
                    "source_filenode = %s", (size, current))
    return 0, size


def _advance(session: Session, next_page: int, copied: int) -> None:
    session.execute("UPDATE reserve_swap.state SET backfill_next_page = %s, rows_copied = rows_copied + %s",
                    (next_page, copied))


def _copy_rows_one_by_one(session: Session, guard_name: str, pages: int, action: str) -> tuple[int, int, bool]:
    """The batch again, a row at a time: a row the standby's guard refuses is recorded as a conflict; one the
    mirror copied meanwhile is skipped."""
    with session.transaction():
        first, end = _next_pages(session, pages, action)
        last = min(first + pages, end)
        session.execute(f"SET CONSTRAINTS reserve_swap.{guard_name} IMMEDIATE")
        ids = [row[0] for row in session.execute(_BATCH.replace("SELECT *", "SELECT id::text", 1),
                                                 {"first": first, "end": last}).fetchall()]
        copied = 0
        for allocation in ids:
            try:
                with session.savepoint():
                    session.execute("INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations "
                                    "WHERE id = %s ON CONFLICT (id) DO NOTHING", (allocation,))
                copied += 1
            except Exception as exc:  # noqa: BLE001 (recorded, the swap refuses until it is resolved)
                exchange.record_conflict(session, allocation, exc)
        _advance(session, last, copied)
        return len(ids), copied, last < end
