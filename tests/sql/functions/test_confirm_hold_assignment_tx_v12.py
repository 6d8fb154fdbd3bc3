"""confirm_hold_assignment_tx v12 at head: the checklist's five manual QA flows, evidence
atomicity, and two sessions racing for the same table."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest

from tests.support import Database, Venue, confirm, slot, sqlstate_of

OVERLAPS = """
    SELECT count(*) FROM allocations a JOIN allocations b
      ON a.restaurant_id = b.restaurant_id AND a.resource_type = b.resource_type
     AND a.resource_id = b.resource_id AND a."window" && b."window" AND a.id < b.id
    WHERE NOT a.shadow AND NOT b.shadow
"""


def _evidence(conn: psycopg.Connection, booking) -> list[tuple]:
    return conn.execute(
        "SELECT booking_id, hold_id, restaurant_id, idempotency_key, table_ids, assignment_window, actor_id, "
        "metadata, checked_at FROM booking_confirmation_results WHERE booking_id = %s",
        (booking,),
    ).fetchall()


def test_single_table_confirm_writes_its_evidence_row(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]])
        rows = confirm(conn, hold, booking, key="qa-1")
        assert [row[1] for row in rows] == [venue.tables[0]]
        assert len(_evidence(conn, booking)) == 1


def test_evidence_row_holds_booking_hold_restaurant_key_tables_window_actor_metadata_and_fresh_checked_at(
    head_db: Database,
):
    metadata = {"policyVersion": "2025-11", "selection": {"snapshot": {"adjacency": {"hash": "abc"}}}}
    actor = "8f14e45f-ceea-467f-a5c3-2bd8d4a8f3a1"
    with head_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(30)
        booking = venue.booking((start, end))
        tables = sorted(venue.tables[:2])
        hold = venue.hold(tables, (start, end), metadata=metadata)
        confirm(conn, hold, booking, key="qa-5", actor=actor)
        now = conn.execute("SELECT now()").fetchone()[0]
        [row] = _evidence(conn, booking)
    assert row[:4] == (booking, hold, venue.id, "qa-5")
    assert row[4] == tables
    assert (row[5].lower, row[5].upper) == (start, end)
    assert str(row[6]) == actor
    assert row[7] == metadata
    assert row[8] == now  # written by this very transaction


def test_overlap_in_same_restaurant_is_rejected_immediately_with_allocations_no_overlap(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        table = venue.tables[0]
        first, second = venue.booking(), venue.booking()
        confirm(conn, venue.hold([table], slot(24)), first, key="a")
        conn.commit()
        competing = venue.hold([table], slot(25), booking=second)
        conn.commit()
        with pytest.raises(psycopg.errors.RaiseException) as rejected:
            confirm(conn, competing, second, key="b")  # inside the call, not at COMMIT
        assert sqlstate_of(rejected) == "P0001"
        assert "allocations_no_overlap" in str(rejected.value)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM allocations WHERE booking_id = %s", (second,)).fetchone()[0] == 0
        assert _evidence(conn, second) == []


def test_same_resource_id_in_two_restaurants_is_allowed(head_db: Database):
    with head_db.connect() as conn:
        first, second = Venue(conn, "A"), Venue(conn, "B")
        shared = first.tables[0]
        for venue in (first, second):
            booking = venue.booking()
            conn.execute(
                "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, \"window\") "
                "VALUES (%s, %s, 'table', %s, tstzrange(%s, %s))",
                (booking, venue.id, shared, *slot(24)),
            )
        conn.commit()
        assert conn.execute("SELECT count(*) FROM allocations WHERE resource_id = %s", (shared,)).fetchone()[0] == 2


def test_deferred_guard_lets_a_batch_pass_through_a_temporary_overlap(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        table = venue.tables[0]
        early, late = venue.booking(), venue.booking()
        insert = (
            "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, \"window\") "
            "VALUES (%s, %s, 'table', %s, tstzrange(%s, %s)) RETURNING id"
        )
        conn.execute(insert, (early, venue.id, table, *slot(24)))
        conn.commit()
        conn.execute("SET CONSTRAINTS allocations_no_overlap DEFERRED")
        moved = conn.execute(insert, (late, venue.id, table, *slot(25))).fetchone()[0]  # overlaps for a moment
        conn.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(26), moved))
        conn.commit()
        assert conn.execute(OVERLAPS).fetchone()[0] == 0


def test_deferred_batch_that_still_overlaps_fails_at_commit(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        insert = (
            "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
            "VALUES (%s, 'table', %s, tstzrange(%s, %s))"
        )
        conn.execute("SET CONSTRAINTS allocations_no_overlap DEFERRED")
        conn.execute(insert, (venue.id, venue.tables[0], *slot(24)))
        conn.execute(insert, (venue.id, venue.tables[0], *slot(25)))
        with pytest.raises(psycopg.errors.ExclusionViolation):
            conn.commit()


def test_failure_after_the_evidence_insert_leaves_no_evidence_row(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(status="completed")  # completed -> confirmed is not a valid transition
        hold = venue.hold([venue.tables[0]])
        conn.commit()
        with pytest.raises(psycopg.errors.RaiseException, match="Invalid booking status transition"):
            confirm(conn, hold, booking, key="k", status="confirmed")
        conn.rollback()
        assert _evidence(conn, booking) == []
        assert conn.execute("SELECT count(*) FROM allocations WHERE booking_id = %s", (booking,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM table_holds WHERE id = %s", (hold,)).fetchone()[0] == 1


def test_idempotent_replay_does_not_duplicate_evidence(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        tables = [venue.tables[0]]
        first = confirm(conn, venue.hold(tables, slot(24), booking=booking), booking, key="same")
        replay = confirm(conn, venue.hold(tables, slot(24), booking=booking), booking, key="same")
        assert [r[1:] for r in replay] == [r[1:] for r in first]
        assert len(_evidence(conn, booking)) == 1
        assert conn.execute("SELECT count(*) FROM allocations WHERE booking_id = %s", (booking,)).fetchone()[0] == 1


def test_confirm_without_idempotency_key_writes_no_evidence(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        confirm(conn, venue.hold([venue.tables[0]]), booking, key=None)
        assert _evidence(conn, booking) == []


def test_two_sessions_racing_for_one_table_exactly_one_wins(head_db: Database):
    """Two holds on one table, confirmed at the same moment for windows that overlap each other.

    The holds themselves do not overlap (so neither is blocked as "held by another live hold");
    the confirm windows do, so only the guard and the table's row lock decide the race.
    """
    with head_db.connect() as setup:
        venue = Venue(setup)
        table = venue.tables[0]
        bookings = [venue.booking(), venue.booking()]
        holds = [venue.hold([table], slot(24), booking=bookings[0]), venue.hold([table], slot(30), booking=bookings[1])]
        setup.commit()
    windows = [slot(25, 3), slot(27, 2.5)]  # [25h, 28h) and [27h, 29.5h) overlap in [27h, 28h)

    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def attempt(i: int) -> None:
        with head_db.connect() as conn:
            try:
                barrier.wait()
                confirm(conn, holds[i], bookings[i], key=f"race-{i}", start=windows[i][0], end=windows[i][1])
                conn.commit()
                outcomes[i] = "won"
            except psycopg.Error as exc:
                outcomes[i] = exc
                conn.rollback()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    winners = [o for o in outcomes if o == "won"]
    losers = [o for o in outcomes if isinstance(o, psycopg.Error)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert losers[0].sqlstate == "P0001"
    assert "allocations_no_overlap" in str(losers[0])
    with head_db.connect() as conn:
        assert conn.execute(OVERLAPS).fetchone()[0] == 0


def test_expired_competing_hold_does_not_block_a_confirm(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        table = venue.tables[0]
        venue.hold([table], slot(24), expires_in=timedelta(minutes=-1), metadata={"stale": True})
        booking = venue.booking()
        assert confirm(conn, venue.hold([table], slot(24), booking=booking), booking, key="k")
