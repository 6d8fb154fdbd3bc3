"""reserve.schema.locks: PostgreSQL's conflict table, what each revision declares, and who is in the way."""

from __future__ import annotations

import pytest

from reserve.rollout import preflight
from reserve.schema import locks, revisions
from tests.support import Database, cloned


def test_the_conflict_table_is_symmetric_as_postgresql_documents_it():
    for a in locks.MODES.values():
        for b in locks.MODES.values():
            assert locks.conflicts(a, b) == locks.conflicts(b, a), (a, b)


def test_access_share_conflicts_only_with_access_exclusive_and_access_exclusive_with_everything():
    assert [m for m in locks.MODES.values() if locks.conflicts("ACCESS SHARE", m)] == ["ACCESS EXCLUSIVE"]
    assert all(locks.conflicts("AccessExclusiveLock", m) for m in locks.MODES)


def test_a_declared_mode_covers_exactly_the_modes_that_block_no_one_more():
    assert locks.covers("SHARE ROW EXCLUSIVE", "SHARE")
    assert locks.covers("ACCESS EXCLUSIVE", "ShareUpdateExclusiveLock")
    assert not locks.covers("SHARE", "SHARE UPDATE EXCLUSIVE")  # SHARE UPDATE EXCLUSIVE blocks another one
    assert not locks.covers("SHARE UPDATE EXCLUSIVE", "SHARE")  # SHARE blocks writers
    assert locks.strongest(["ROW EXCLUSIVE", "ACCESS SHARE", "SHARE ROW EXCLUSIVE"]) == "SHARE ROW EXCLUSIVE"
    with pytest.raises(ValueError):
        locks.sql_mode("SUPER EXCLUSIVE")


def test_every_revision_declares_both_directions():
    assert sorted(locks.DECLARED) == sorted(revisions.chain())
    for revision in revisions.chain():
        assert set(locks.DECLARED[revision]) == {"upgrade", "downgrade"}, revision


def test_declared_locks_are_taken_strongest_first_in_name_order():
    groups = locks.declared("0003a_operations", "upgrade").groups()
    assert [mode for mode, _ in groups] == ["ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE"]
    assert groups[1][1] == ["public.bookings", "public.restaurants"]


def test_allocations_is_locked_after_the_tables_that_point_at_it_so_a_confirmation_cannot_deadlock_the_swap():
    exchange = locks.StepLocks({"public.allocations": "ACCESS EXCLUSIVE",
                                "public.booking_table_assignments": "ACCESS EXCLUSIVE",
                                "public.booking_assignment_idempotency": "ACCESS EXCLUSIVE",
                                "public.table_inventory": "ACCESS SHARE"}).groups()
    assert exchange == [("ACCESS EXCLUSIVE", ["public.booking_assignment_idempotency",
                                              "public.booking_table_assignments", "public.allocations"]),
                        ("ACCESS SHARE", ["public.table_inventory"])]


def test_the_swaps_own_tables_are_locked_after_allocations_whose_capture_trigger_writes_them():
    closing = locks.StepLocks({"reserve_swap.log": "ACCESS EXCLUSIVE", "public.allocations": "ACCESS EXCLUSIVE",
                               "reserve_swap.allocations": "ACCESS EXCLUSIVE",
                               "public.bookings": "ACCESS EXCLUSIVE"}).groups()
    assert closing == [("ACCESS EXCLUSIVE", ["public.bookings", "public.allocations", "reserve_swap.allocations",
                                             "reserve_swap.log"])]


def test_holders_name_a_conflicting_session_by_pid_and_application_but_not_a_compatible_one(head_db: Database):
    with head_db.connect() as reader, head_db.connect(autocommit=True) as watcher:
        reader.execute("SET application_name = 'booking-pages'")
        reader.execute("SELECT count(*) FROM allocations")  # ACCESS SHARE, until rollback
        pid = reader.info.backend_pid
        conflicting = locks.holders(watcher, {"public.allocations": "ACCESS EXCLUSIVE"})
        compatible = locks.holders(watcher, {"public.allocations": "SHARE UPDATE EXCLUSIVE"})
        reader.rollback()
    assert [(h.pid, h.application, h.mode, h.granted) for h in conflicting] == [
        (pid, "booking-pages", "ACCESS SHARE", True)]
    assert conflicting[0].describe().startswith(f"pid {pid} (booking-pages) holds ACCESS SHARE on public.allocations")
    assert compatible == []


def test_a_lock_in_a_template_twin_database_is_not_this_databases_business(pg_server, head_db: Database):
    """pg_locks is cluster-wide and a database made from a template shares its relation OIDs."""
    with cloned(pg_server, head_db.name, f"{head_db.name}_twin") as twin_db:
        with twin_db.connect() as holder, head_db.connect(autocommit=True) as conn:
            holder.execute("LOCK TABLE allocations IN ACCESS EXCLUSIVE MODE")
            same_oid = conn.execute("SELECT 'public.allocations'::regclass::oid").fetchone()[0] == \
                holder.execute("SELECT 'public.allocations'::regclass::oid").fetchone()[0]
            assert same_oid  # the trap: the twin's lock names the very same relation OID
            assert locks.holders(conn, {"public.allocations": "ACCESS EXCLUSIVE"}) == []
            report = preflight.preflight(head_db.url, "-1", backup_confirmed=True)
            holder.rollback()
    check = next(c for c in report.checks if c.name == "lock holders")
    assert check.status == "ok", report.to_text()
