"""confirm_hold_assignment_tx v11 at revision 0001_baseline: what a confirmation
writes, and every error it raises, each leaving nothing behind."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.support import (
    NOTHING_WRITTEN,
    Database,
    Venue,
    booking_rows,
    call_confirm,
    confirm,
    scalar,
    slot,
    sqlstate_of,
)

ACTOR = uuid.UUID("8f14e45f-ceea-467f-a5c3-2bd8d4a8f3a1")
METADATA = {"policyVersion": "2025-11", "selection": {"snapshot": {"adjacency": {"hash": "adj-1"}}}}


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _window_utc(start: datetime, end: datetime) -> str:
    """The window as v11 writes it: ``<start>/<end>``, UTC, microseconds, ``Z``."""
    return f"{_utc(start)}/{_utc(end)}"


def _checksum(booking, tables, start, end, actor, hold) -> str:
    """v11's documented recipe, recomputed independently: sha256 hex of the UTF-8 text
    ``booking|sorted table ids joined by ','|window UTC|actor or ''|hold``."""
    parts = [str(booking), ",".join(str(t) for t in sorted(tables)), _window_utc(start, end),
             str(actor) if actor else "", str(hold)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _outbox(conn: psycopg.Connection, booking) -> list[tuple]:
    return conn.execute(
        "SELECT event_type, dedupe_key, restaurant_id, idempotency_key, payload FROM capacity_outbox "
        "WHERE booking_id = %s ORDER BY event_type, dedupe_key",
        (booking,),
    ).fetchall()


def _hold_exists(conn: psycopg.Connection, hold) -> bool:
    return scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (hold,)) == 1


def _booking_state(conn: psycopg.Connection, booking) -> tuple:
    return conn.execute("SELECT status, assigned_zone_id FROM bookings WHERE id = %s", (booking,)).fetchone()


def _rejected(conn: psycopg.Connection, hold, booking, match: str | None = None, **kwargs) -> str | None:
    """Confirm, expect it to raise (with a message matching ``match``), roll the transaction
    back; the error's SQLSTATE."""
    with pytest.raises(psycopg.Error, match=match) as raised:
        confirm(conn, hold, booking, **kwargs)
    conn.rollback()
    return sqlstate_of(raised)


def _assert_nothing_written(conn: psycopg.Connection, booking, hold=None, hold_booking=None) -> None:
    assert booking_rows(conn, booking) == NOTHING_WRITTEN
    assert _booking_state(conn, booking) == ("pending", None)
    if hold is not None:
        assert _hold_exists(conn, hold)
        assert scalar(conn, "SELECT booking_id FROM table_holds WHERE id = %s", (hold,)) == hold_booking
        assert scalar(conn, "SELECT count(*) FROM table_hold_members WHERE hold_id = %s", (hold,)) > 0


# ---------------------------------------------------------------- happy path


def test_single_table_confirm_writes_assignment_one_table_allocation_and_returns_it(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(24)
        booking = venue.booking((start, end))
        table = venue.tables[0]
        hold = venue.hold([table], (start, end))
        rows = confirm(conn, hold, booking, key="k1", actor=ACTOR)

        assignment = conn.execute(
            "SELECT id, table_id, start_at, end_at, merge_group_id, idempotency_key, assigned_by, allocation_id "
            "FROM booking_table_assignments WHERE booking_id = %s", (booking,),
        ).fetchall()
        assert rows == [row[:5] for row in assignment]
        assert [row[1:] for row in rows] == [(table, start, end, None)]
        assert assignment[0][5:7] == ("k1", ACTOR)
        allocations = conn.execute(
            'SELECT id, resource_type, resource_id, lower("window"), upper("window"), restaurant_id, created_by, shadow '
            "FROM allocations WHERE booking_id = %s", (booking,),
        ).fetchall()
        assert allocations == [(assignment[0][7], "table", table, start, end, venue.id, ACTOR, False)]
        assert _booking_state(conn, booking) == ("pending", venue.zone)


def test_merge_confirm_writes_one_table_allocation_per_table_plus_one_merge_group_row(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn, tables=3)
        tables = sorted(venue.tables)
        booking = venue.booking()
        hold = venue.hold(list(reversed(tables)))
        rows = confirm(conn, hold, booking, key="merge")

        assert [row[1] for row in rows] == tables  # one row per table, sorted
        merge_groups = {row[4] for row in rows}
        assert len(merge_groups) == 1 and None not in merge_groups
        [merge_group] = merge_groups
        kinds = conn.execute(
            "SELECT resource_type, resource_id FROM allocations WHERE booking_id = %s ORDER BY resource_type, resource_id",
            (booking,),
        ).fetchall()
        assert kinds == [("merge_group", merge_group)] + [("table", t) for t in tables]
        merge_allocation = scalar(
            conn, "SELECT id FROM allocations WHERE booking_id = %s AND resource_type = 'merge_group'", (booking,)
        )
        assert scalar(
            conn, "SELECT merge_group_allocation_id FROM booking_assignment_idempotency WHERE booking_id = %s",
            (booking,),
        ) == merge_allocation
        assert booking_rows(conn, booking)["assignments"] == 3


def test_confirm_consumes_the_hold_and_its_members(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold(venue.tables[:2])
        confirm(conn, hold, booking)
        assert not _hold_exists(conn, hold)
        assert scalar(conn, "SELECT count(*) FROM table_hold_members WHERE hold_id = %s", (hold,)) == 0


def test_idempotency_row_carries_the_sha256_checksum_of_booking_tables_window_actor_and_hold(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(30, 1.5)
        booking = venue.booking((start, end))
        tables = venue.tables[:2]
        hold = venue.hold(tables, (start, end))
        confirm(conn, hold, booking, key="chk", actor=ACTOR)
        row = conn.execute(
            "SELECT table_ids, lower(assignment_window), upper(assignment_window), payload_checksum "
            "FROM booking_assignment_idempotency WHERE booking_id = %s AND idempotency_key = 'chk'", (booking,),
        ).fetchone()
        assert row[:3] == (sorted(tables), start, end)
        assert row[3] == _checksum(booking, tables, start, end, ACTOR, hold)


def test_checksum_without_actor_uses_an_empty_actor_field(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(24)
        booking = venue.booking((start, end))
        hold = venue.hold([venue.tables[0]], (start, end))
        confirm(conn, hold, booking, key="chk", actor=None)
        checksum = scalar(conn, "SELECT payload_checksum FROM booking_assignment_idempotency WHERE booking_id = %s",
                          (booking,))
        assert checksum == _checksum(booking, [venue.tables[0]], start, end, None, hold)


def test_confirm_without_idempotency_key_writes_no_idempotency_row(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        confirm(conn, venue.hold([venue.tables[0]]), booking, key=None)
        counts = booking_rows(conn, booking)
        assert counts["idempotency"] == 0 and counts["allocations"] == 1 and counts["outbox"] == 2


def test_confirm_emits_assignment_sync_and_hold_confirmed_events_with_their_dedupe_keys(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(24)
        booking = venue.booking((start, end))
        tables = sorted(venue.tables[:2])
        hold = venue.hold(tables, (start, end))
        rows = confirm(conn, hold, booking, key="evt")
        events = _outbox(conn, booking)

    table_list = ",".join(str(t) for t in tables)
    assert [event[:4] for event in events] == [
        ("capacity.assignment.sync", f"{booking}:{_window_utc(start, end)}:{table_list}", venue.id, "evt"),
        ("capacity.hold.confirmed", f"{booking}:{hold}:hold.confirmed", venue.id, "evt"),
    ]
    sync, confirmed = events[0][4], events[1][4]
    assert sync == {"bookingId": str(booking), "holdId": str(hold), "tableIds": [str(t) for t in tables],
                    "window": _window_utc(start, end), "mergeGroupId": str(rows[0][4])}
    assert confirmed == {"bookingId": str(booking), "holdId": str(hold), "tableIds": [str(t) for t in tables]}


def test_replay_with_a_second_hold_and_the_same_key_emits_each_dedupe_key_once(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        window = slot(24)
        booking = venue.booking(window)
        tables = venue.tables[:2]
        first_hold = venue.hold(tables, window, booking=booking)
        first = confirm(conn, first_hold, booking, key="same")
        conn.commit()
        before = booking_rows(conn, booking)
        second_hold = venue.hold(tables, window, booking=booking)
        replay = confirm(conn, second_hold, booking, key="same")

        assert replay == first  # the same assignments, ids included
        after = booking_rows(conn, booking)
        assert {k: v for k, v in after.items() if k != "outbox"} == {k: v for k, v in before.items() if k != "outbox"}
        events = _outbox(conn, booking)
        assert [e[0] for e in events].count("capacity.assignment.sync") == 1
        assert sorted(e[1] for e in events if e[0] == "capacity.hold.confirmed") == sorted(
            f"{booking}:{h}:hold.confirmed" for h in (first_hold, second_hold)
        )
        assert len({e[1] for e in events}) == len(events)
        assert not _hold_exists(conn, second_hold)


def test_replay_in_another_window_reports_the_window_actually_assigned(baseline_db: Database):
    """The key's earlier result wins (an idempotency key replayed returns the earlier result), so the sync event
    and the checksum must describe that assignment, not the window the second hold asked for."""
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        start, end = slot(24)
        booking = venue.booking((start, end))
        table = venue.tables[0]
        confirm(conn, venue.hold([table], (start, end), booking=booking), booking, key="same")
        moved_hold = venue.hold([table], slot(48), booking=booking)
        rows = confirm(conn, moved_hold, booking, key="same")

        assert [(r[2], r[3]) for r in rows] == [(start, end)]
        syncs = [e for e in _outbox(conn, booking) if e[0] == "capacity.assignment.sync"]
        assert [e[1] for e in syncs] == [f"{booking}:{_window_utc(start, end)}:{table}"]
        checksum = scalar(conn, "SELECT payload_checksum FROM booking_assignment_idempotency WHERE booking_id = %s",
                          (booking,))
        assert checksum == _checksum(booking, [table], start, end, None, moved_hold)


def test_two_confirmations_without_key_of_the_same_tables_and_window_sync_once(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        window = slot(24)
        booking = venue.booking(window)
        for _ in range(2):
            confirm(conn, venue.hold([venue.tables[0]], window, booking=booking), booking, key=None)
        types = [e[0] for e in _outbox(conn, booking)]
        assert types.count("capacity.assignment.sync") == 1
        assert types.count("capacity.hold.confirmed") == 2


def test_given_window_overrides_the_hold_window(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        start, end = slot(25, 1)
        hold = venue.hold([venue.tables[0]], slot(24, 3))
        rows = confirm(conn, hold, booking, start=start, end=end)
        assert [(r[2], r[3]) for r in rows] == [(start, end)]
        assert conn.execute('SELECT lower("window"), upper("window") FROM allocations WHERE booking_id = %s',
                            (booking,)).fetchall() == [(start, end)]


def test_target_status_moves_the_booking_and_records_reason_metadata_and_actor(baseline_db: Database):
    changer = uuid.uuid4()
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]])
        call_confirm(conn, hold_id=hold, booking_id=booking, idempotency_key="st", assigned_by=ACTOR,
                     target_status="confirmed", history_reason="manual_qa", history_metadata={"flow": 3},
                     history_changed_by=changer)
        assert _booking_state(conn, booking)[0] == "confirmed"
        history = conn.execute(
            "SELECT from_status, to_status, reason, metadata, changed_by FROM booking_state_history "
            "WHERE booking_id = %s", (booking,),
        ).fetchall()
        assert history == [("pending", "confirmed", "manual_qa", {"flow": 3}, changer)]


def test_target_status_history_defaults_to_auto_assign_reason_and_the_assigning_actor(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        confirm(conn, venue.hold([venue.tables[0]]), booking, actor=ACTOR, status="confirmed")
        history = conn.execute(
            "SELECT reason, metadata, changed_by FROM booking_state_history WHERE booking_id = %s", (booking,)
        ).fetchall()
        assert history == [("auto_assign_confirm", {}, ACTOR)]


def test_target_status_equal_to_the_current_one_writes_no_history(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(status="confirmed")
        confirm(conn, venue.hold([venue.tables[0]]), booking, status="confirmed")
        assert booking_rows(conn, booking)["history"] == 0
        assert _booking_state(conn, booking)[0] == "confirmed"


def test_without_target_status_the_booking_status_is_left_alone(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        confirm(conn, venue.hold([venue.tables[0]]), booking)
        assert _booking_state(conn, booking)[0] == "pending"
        assert booking_rows(conn, booking)["history"] == 0


@pytest.mark.parametrize(
    ("expected_policy", "expected_hash", "metadata"),
    [
        ("2025-11", "adj-1", METADATA),  # both match
        (None, None, METADATA),  # caller expects nothing
        ("other", "other", {}),  # the hold recorded nothing
        ("other", None, {"selection": {"snapshot": {"adjacency": {"hash": "adj-1"}}}}),
        (None, "other", {"policyVersion": "2025-11"}),
    ],
    ids=["both-match", "no-expectation", "hold-recorded-nothing", "policy-unrecorded", "hash-unrecorded"],
)
def test_policy_and_adjacency_checks_pass_when_equal_or_either_side_is_null(
    baseline_db: Database, expected_policy, expected_hash, metadata
):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]], metadata=metadata)
        assert confirm(conn, hold, booking, policy=expected_policy, hash=expected_hash)


# ---------------------------------------------------------------- errors: SQLSTATE, and nothing written


@pytest.mark.parametrize("bound", ["start", "end"])
def test_only_one_window_bound_is_rejected_with_22023_and_nothing_is_written(baseline_db: Database, bound):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]])
        conn.commit()
        assert _rejected(conn, hold, booking, **{bound: slot(24)[0]}) == "22023"
        _assert_nothing_written(conn, booking, hold)


def test_missing_hold_is_rejected_with_p0002_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        conn.commit()
        assert _rejected(conn, uuid.uuid4(), booking) == "P0002"
        _assert_nothing_written(conn, booking)


def test_missing_booking_is_rejected_with_p0002_and_the_hold_stays_unbound(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        hold = venue.hold([venue.tables[0]])
        conn.commit()
        missing = uuid.uuid4()
        assert _rejected(conn, hold, missing) == "P0002"
        assert _hold_exists(conn, hold)
        assert scalar(conn, "SELECT booking_id FROM table_holds WHERE id = %s", (hold,)) is None
        assert scalar(conn, "SELECT count(*) FROM allocations") == 0


def test_hold_bound_to_another_booking_is_rejected_with_p0001_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking, other = venue.booking(), venue.booking()
        hold = venue.hold([venue.tables[0]], booking=other)
        conn.commit()
        # Not merely the other booking's live hold blocking the tables: the binding check itself.
        assert _rejected(conn, hold, booking, match="bound to another booking") == "P0001"
        _assert_nothing_written(conn, booking, hold, hold_booking=other)
        _assert_nothing_written(conn, other)


def test_expired_hold_is_rejected_with_p0001_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]], expires_in=timedelta(seconds=-1))
        conn.commit()
        assert _rejected(conn, hold, booking) == "P0001"
        _assert_nothing_written(conn, booking, hold)


def test_hold_without_member_tables_is_rejected_with_p0001_and_nothing_is_written(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([])
        conn.commit()
        assert _rejected(conn, hold, booking) == "P0001"
        assert _hold_exists(conn, hold)
        assert booking_rows(conn, booking) == NOTHING_WRITTEN


@pytest.mark.parametrize(("policy", "adjacency_hash"), [("2025-10", "adj-1"), ("2025-11", "adj-2")],
                         ids=["policy-version-changed", "adjacency-hash-changed"])
def test_a_stale_policy_version_or_adjacency_hash_is_rejected_with_p0003_and_nothing_is_written(
        baseline_db: Database, policy: str, adjacency_hash: str):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]], metadata=METADATA)
        conn.commit()
        assert _rejected(conn, hold, booking, policy=policy, hash=adjacency_hash) == "P0003"
        _assert_nothing_written(conn, booking, hold)


@pytest.mark.parametrize("length_hours", [0, -1], ids=["start-equals-end", "start-after-end"])
def test_empty_window_is_rejected_with_22000_and_nothing_is_written(baseline_db: Database, length_hours):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]])
        conn.commit()
        start, end = slot(24, length_hours)
        assert _rejected(conn, hold, booking, start=start, end=end) == "22000"
        _assert_nothing_written(conn, booking, hold)


def test_invalid_target_status_transition_rolls_back_the_whole_confirmation(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking(status="cancelled")
        hold = venue.hold([venue.tables[0]])
        conn.commit()
        assert _rejected(conn, hold, booking, status="confirmed") == "P0001"
        assert booking_rows(conn, booking) == NOTHING_WRITTEN
        assert _booking_state(conn, booking) == ("cancelled", None)
        assert _hold_exists(conn, hold)


def test_validation_error_from_the_assignment_rolls_back_the_whole_confirmation(baseline_db: Database):
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        inactive = venue.add_table("Off", active=False)
        hold = venue.hold([inactive])
        conn.commit()
        assert _rejected(conn, hold, booking) == "22023"
        _assert_nothing_written(conn, booking, hold)
