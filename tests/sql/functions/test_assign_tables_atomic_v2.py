"""assign_tables_atomic_v2 v1 at revision 0001_baseline: the rules it enforces, what it
writes, idempotent replay, and live holds of other bookings."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from tests.support import (
    NOTHING_WRITTEN,
    Database,
    Venue,
    assign_tables,
    booking_rows,
    scalar,
    slot,
    sqlstate_of,
)


def _rejected(conn: psycopg.Connection, booking, tables, **kwargs) -> str | None:
    """Assign, expect it to raise, roll the transaction back; the error's SQLSTATE."""
    with pytest.raises(psycopg.Error) as raised:
        assign_tables(conn, booking, tables, **kwargs)
    conn.rollback()
    return sqlstate_of(raised)


def _assert_nothing_written(conn: psycopg.Connection, booking) -> None:
    assert booking_rows(conn, booking) == NOTHING_WRITTEN
    assert scalar(conn, "SELECT assigned_zone_id FROM bookings WHERE id = %s", (booking,)) is None


# ---------------------------------------------------------------- what a successful call writes


def test_single_table_writes_one_table_allocation_one_assignment_and_the_idempotency_row(baseline_db: Database):
    actor = uuid.uuid4()
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(24)
        booking = venue.booking((start, end))
        table = venue.tables[0]
        rows = assign_tables(conn, booking, [table], "k1", actor=actor)

        assert rows == [(table, start, end, None)]
        assert conn.execute(
            'SELECT resource_type, resource_id, restaurant_id, lower("window"), upper("window"), created_by '
            "FROM allocations WHERE booking_id = %s", (booking,),
        ).fetchall() == [("table", table, venue.id, start, end, actor)]
        assert conn.execute(
            "SELECT a.table_id, a.allocation_id = al.id, a.idempotency_key, a.assigned_by, a.start_at, a.end_at "
            "FROM booking_table_assignments a JOIN allocations al ON al.booking_id = a.booking_id "
            "WHERE a.booking_id = %s", (booking,),
        ).fetchall() == [(table, True, "k1", actor, start, end)]
        assert conn.execute(
            "SELECT table_ids, lower(assignment_window), upper(assignment_window), merge_group_allocation_id "
            "FROM booking_assignment_idempotency WHERE booking_id = %s AND idempotency_key = 'k1'", (booking,),
        ).fetchall() == [([table], start, end, None)]
        assert scalar(conn, "SELECT assigned_zone_id FROM bookings WHERE id = %s", (booking,)) == venue.zone


def test_merge_writes_a_table_allocation_per_table_and_one_merge_group_row(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, tables=3)
        booking = venue.booking()
        tables = sorted(venue.tables)
        rows = assign_tables(conn, booking, list(reversed(tables)) + [tables[0]], "m")  # unsorted, with a duplicate

        assert [row[0] for row in rows] == tables
        [merge_group] = {row[3] for row in rows}
        assert merge_group is not None
        assert conn.execute(
            "SELECT resource_type, resource_id FROM allocations WHERE booking_id = %s ORDER BY resource_type, resource_id",
            (booking,),
        ).fetchall() == [("merge_group", merge_group)] + [("table", t) for t in tables]
        assert conn.execute(
            "SELECT DISTINCT merge_group_id FROM booking_table_assignments WHERE booking_id = %s", (booking,)
        ).fetchall() == [(merge_group,)]
        assert booking_rows(conn, booking)["assignments"] == 3


def test_explicit_window_overrides_the_booking_window(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(slot(24))
        start, end = slot(26, 1)
        assert assign_tables(conn, booking, [venue.tables[0]], start=start, end=end) == [
            (venue.tables[0], start, end, None)
        ]


def test_missing_booking_is_rejected_with_p0002(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        conn.commit()
        assert _rejected(conn, uuid.uuid4(), [venue.tables[0]]) == "P0002"
        assert scalar(conn, "SELECT count(*) FROM allocations") == 0


def test_missing_table_is_rejected_with_p0002_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, booking, [venue.tables[0], uuid.uuid4()]) == "P0002"
        _assert_nothing_written(conn, booking)


@pytest.mark.parametrize("tables", [[], [None]], ids=["empty-list", "null-id"])
def test_empty_table_list_or_null_table_id_is_rejected_with_22023(baseline_db: Database, tables):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, booking, tables) == "22023"
        _assert_nothing_written(conn, booking)


# ---------------------------------------------------------------- table rules (22023, nothing written)


def test_table_of_another_restaurant_is_rejected_with_22023_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue, other = Venue(conn, "A"), Venue(conn, "B")
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, booking, [other.tables[0]]) == "22023"
        assert _rejected(conn, booking, [venue.tables[0], other.tables[0]]) == "22023"
        _assert_nothing_written(conn, booking)


@pytest.mark.parametrize("table", [{"number": "Off", "active": False}, {"number": "NoZone", "zone": None}],
                         ids=["inactive-table", "table-without-zone"])
def test_an_inactive_or_zoneless_table_is_rejected_with_22023_and_nothing_is_written(
        baseline_db: Database, table: dict):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        unusable = venue.add_table(**table)
        conn.commit()
        assert _rejected(conn, booking, [unusable]) == "22023"
        _assert_nothing_written(conn, booking)


def test_tables_of_mixed_zones_are_rejected_with_22023_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        terrace = venue.add_table("Terrace1", zone=venue.add_zone("Terrace"))
        booking = venue.booking()
        venue.connect_tables(venue.tables[0], terrace)
        conn.commit()
        assert _rejected(conn, booking, [venue.tables[0], terrace]) == "22023"
        _assert_nothing_written(conn, booking)


def test_fixed_table_in_a_merge_is_rejected_with_22023_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        fixed = venue.add_table("Fixed", mobility="fixed")
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, booking, [venue.tables[0], fixed]) == "22023"
        _assert_nothing_written(conn, booking)


def test_fixed_table_on_its_own_is_accepted(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, mobility="fixed")
        booking = venue.booking()
        assert [row[0] for row in assign_tables(conn, booking, [venue.tables[0]])] == [venue.tables[0]]


# ---------------------------------------------------------------- adjacency


def test_non_adjacent_tables_are_rejected_with_22023_when_adjacency_is_required(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, tables=3)
        first, second, third = venue.tables
        venue.connect_tables(first, second)  # third touches neither
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, booking, [first, second, third], adjacency=True) == "22023"
        assert _rejected(conn, booking, [first, third], adjacency=True) == "22023"
        _assert_nothing_written(conn, booking)


def test_connected_chain_of_tables_is_accepted_when_adjacency_is_required(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, tables=3)
        first, second, third = venue.tables
        venue.connect_tables(first, second)
        venue.connect_tables(third, second)  # stored the other way round: edges are undirected
        booking = venue.booking()
        rows = assign_tables(conn, booking, [first, second, third], adjacency=True)
        assert sorted(row[0] for row in rows) == sorted(venue.tables)


def test_non_adjacent_tables_are_accepted_when_adjacency_is_not_required(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        rows = assign_tables(conn, booking, venue.tables[:2], adjacency=False)
        assert len(rows) == 2


# ---------------------------------------------------------------- idempotency


def test_replayed_key_with_the_same_table_set_returns_the_earlier_result_and_writes_nothing_new(
    baseline_db: Database,
):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(slot(24))
        tables = venue.tables[:2]
        first = assign_tables(conn, booking, tables, "same")
        conn.commit()
        before = booking_rows(conn, booking)
        allocations_before = conn.execute("SELECT id, updated_at FROM allocations ORDER BY id").fetchall()

        start, end = slot(48)  # even another window: the key's earlier result wins
        replay = assign_tables(conn, booking, list(reversed(tables)), "same", start=start, end=end)

        assert replay == first
        assert booking_rows(conn, booking) == before
        assert conn.execute("SELECT id, updated_at FROM allocations ORDER BY id").fetchall() == allocations_before


def test_replayed_key_with_another_table_set_is_rejected_with_p0003(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        assign_tables(conn, booking, [venue.tables[0]], "same")
        conn.commit()
        before = booking_rows(conn, booking)
        assert _rejected(conn, booking, [venue.tables[1]], key="same") == "P0003"
        assert _rejected(conn, booking, venue.tables[:2], key="same") == "P0003"
        assert booking_rows(conn, booking) == before


def test_same_key_on_another_booking_is_not_a_replay(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        first, second = venue.booking(slot(24)), venue.booking(slot(30))
        assign_tables(conn, first, [venue.tables[0]], "shared")
        assign_tables(conn, second, [venue.tables[1]], "shared")
        assert booking_rows(conn, second)["allocations"] == 1


# ---------------------------------------------------------------- live holds


def test_live_hold_of_another_booking_in_the_window_is_rejected_with_p0001(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking, other = venue.booking(slot(24)), venue.booking(slot(24))
        venue.hold([venue.tables[0]], slot(25), booking=other)
        conn.commit()
        assert _rejected(conn, booking, [venue.tables[0]]) == "P0001"
        _assert_nothing_written(conn, booking)


def test_unbound_live_hold_in_the_window_is_rejected_with_p0001(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(slot(24))
        venue.hold(venue.tables[:2], slot(23))
        conn.commit()
        assert _rejected(conn, booking, [venue.tables[1]]) == "P0001"
        _assert_nothing_written(conn, booking)


def test_expired_hold_of_another_booking_does_not_conflict(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking, other = venue.booking(slot(24)), venue.booking(slot(24))
        venue.hold([venue.tables[0]], slot(24), booking=other, expires_in=timedelta(seconds=-1))
        assert len(assign_tables(conn, booking, [venue.tables[0]])) == 1


def test_own_hold_and_holds_outside_the_window_or_on_other_tables_do_not_conflict(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking, other = venue.booking(slot(24)), venue.booking(slot(24))
        venue.hold([venue.tables[0]], slot(24), booking=booking)
        venue.hold([venue.tables[0]], slot(26), booking=other)  # starts where ours ends: [) ranges
        venue.hold([venue.tables[1]], slot(24), booking=other)
        assert len(assign_tables(conn, booking, [venue.tables[0]])) == 1


def test_booking_of_another_tenant_context_is_rejected_with_42501(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue, other = Venue(conn, "A"), Venue(conn, "B")
        booking = venue.booking()
        conn.commit()
        conn.execute("SELECT set_restaurant_context(%s)", (other.id,))
        assert _rejected(conn, booking, [venue.tables[0]]) == "42501"
        _assert_nothing_written(conn, booking)
