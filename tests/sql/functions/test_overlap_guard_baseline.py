"""The baseline's overlap guard, allocations_resource_window_excl: INITIALLY DEFERRED, so an
overlapping confirmation passes the call and fails only at COMMIT, with SQLSTATE 23P01."""

from __future__ import annotations

import psycopg
import pytest

from tests.support import NOTHING_WRITTEN, Database, Venue, booking_rows, confirm, scalar, slot

ALLOCATIONS = "SELECT count(*) FROM allocations WHERE booking_id = %s"


def _commit_fails_with_exclusion_violation(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.ExclusionViolation) as failed:
        conn.commit()
    assert failed.value.sqlstate == "23P01"
    assert failed.value.diag.constraint_name == "allocations_resource_window_excl"


def test_guard_is_deferrable_and_initially_deferred_at_baseline(baseline_db: Database):
    with baseline_db.connect() as conn:
        row = conn.execute(
            "SELECT contype, condeferrable, condeferred FROM pg_constraint "
            "WHERE conname = 'allocations_resource_window_excl' AND conrelid = 'public.allocations'::regclass"
        ).fetchone()
    assert row == ("x", True, True)


def test_overlapping_confirm_in_one_transaction_passes_the_call_and_fails_at_commit_with_23p01(
    baseline_db: Database,
):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        table = venue.tables[0]
        first, second = venue.booking(slot(24)), venue.booking(slot(25))
        conn.commit()

        assert confirm(conn, venue.hold([table], slot(24), booking=first), first, key="a")
        assert confirm(conn, venue.hold([table], slot(25), booking=second), second, key="b")  # call passes
        assert scalar(conn, ALLOCATIONS, (second,)) == 1
        _commit_fails_with_exclusion_violation(conn)

        assert booking_rows(conn, first) == NOTHING_WRITTEN
        assert booking_rows(conn, second) == NOTHING_WRITTEN


def _second_hold_on_a_confirmed_table(conn) -> tuple[object, object, object, object]:
    """A table confirmed for 24:00-26:00 (committed), and a committed hold on it for 25:00-27:00 of another
    booking: (table, the confirmed booking, the hold, its booking)."""
    venue = Venue(conn)
    table = venue.tables[0]
    first, second = venue.booking(slot(24)), venue.booking(slot(25))
    confirm(conn, venue.hold([table], slot(24), booking=first), first, key="a")
    conn.commit()
    hold = venue.hold([table], slot(25), booking=second)
    conn.commit()
    return table, first, hold, second


def test_overlapping_confirm_after_the_first_committed_passes_the_call_and_fails_at_commit_with_23p01(
    baseline_db: Database,
):
    with baseline_db.connect() as conn:
        table, first, hold, second = _second_hold_on_a_confirmed_table(conn)

        assert confirm(conn, hold, second, key="b")  # call passes
        _commit_fails_with_exclusion_violation(conn)

        assert scalar(conn, ALLOCATIONS, (first,)) == 1
        assert booking_rows(conn, second) == NOTHING_WRITTEN
        assert scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (hold,)) == 1


def test_overlapping_merge_confirm_fails_at_commit_on_the_shared_table(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, tables=3)
        first, second = venue.booking(slot(24)), venue.booking(slot(24))
        confirm(conn, venue.hold(venue.tables[:2], slot(24), booking=first), first, key="a")
        conn.commit()
        assert confirm(conn, venue.hold(venue.tables[1:], slot(24), booking=second), second, key="b")
        _commit_fails_with_exclusion_violation(conn)
        assert booking_rows(conn, second) == NOTHING_WRITTEN


def test_back_to_back_windows_and_other_tables_commit(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        first, second, third = venue.booking(slot(24)), venue.booking(slot(26)), venue.booking(slot(24))
        confirm(conn, venue.hold([venue.tables[0]], slot(24), booking=first), first, key="a")
        confirm(conn, venue.hold([venue.tables[0]], slot(26), booking=second), second, key="b")  # [) windows
        confirm(conn, venue.hold([venue.tables[1]], slot(24), booking=third), third, key="c")
        conn.commit()
        assert scalar(conn, "SELECT count(*) FROM allocations") == 3


def test_shadow_allocations_are_exempt_from_the_guard(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        table = venue.tables[0]
        first, second = venue.booking(slot(24)), venue.booking(slot(24))
        confirm(conn, venue.hold([table], slot(24), booking=first), first, key="a")
        conn.execute(
            'INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, "window", shadow) '
            "VALUES (%s, %s, 'table', %s, tstzrange(%s, %s), true)",
            (second, venue.id, table, *slot(24)),
        )
        conn.commit()
        assert scalar(conn, "SELECT count(*) FROM allocations WHERE resource_id = %s", (table,)) == 2


def test_guard_set_immediate_is_reported_in_the_call_as_p0001_allocations_no_overlap(baseline_db: Database):
    """assign_tables_atomic_v2 maps an overlap it catches to P0001 'allocations_no_overlap'; at
    baseline it can catch one only when the caller makes the deferred guard immediate."""
    with baseline_db.connect() as conn:
        table, first, hold, second = _second_hold_on_a_confirmed_table(conn)
        conn.execute("SET CONSTRAINTS allocations_resource_window_excl IMMEDIATE")
        with pytest.raises(psycopg.errors.RaiseException, match="allocations_no_overlap") as raised:
            confirm(conn, hold, second, key="b")
        assert raised.value.sqlstate == "P0001"
        conn.rollback()
        assert booking_rows(conn, second) == NOTHING_WRITTEN
