"""reserve analyze confirmations: bookings with several evidence rows and why, the cache hit rate, and the
evidence for the decision not to add UNIQUE (booking_id)."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from reserve.cli import main
from reserve.operations import analysis
from tests.support import Database, Venue, confirm, reserve_cli, slot


def run(db: Database, *args: str):
    return reserve_cli(db.url, "analyze", "confirmations", *args)


def _confirm(conn: psycopg.Connection, venue: Venue, booking: uuid.UUID, tables: list[uuid.UUID], hours: float,
             key: str) -> None:
    confirm(conn, venue.hold(tables, slot(hours), booking=booking), booking, key=key, start=None, end=None)


@pytest.fixture
def history(head_db: Database) -> dict[str, uuid.UUID]:
    """One booking per case: confirmed once, re-seated, moved in time, and confirmed twice identically."""
    with head_db.connect() as conn:
        venue = Venue(conn, tables=6)
        t = venue.tables
        once, reseated, moved, repeated = (venue.booking(slot(h)) for h in (24, 30, 36, 42))
        _confirm(conn, venue, once, [t[0]], 24, "a")
        _confirm(conn, venue, reseated, [t[1]], 30, "a")
        _confirm(conn, venue, reseated, [t[2]], 30, "b")
        _confirm(conn, venue, moved, [t[3]], 36, "a")
        _confirm(conn, venue, moved, [t[3]], 37, "b")
        _confirm(conn, venue, repeated, [t[4]], 42, "a")
        _confirm(conn, venue, repeated, [t[4]], 42, "b")
        for outcome in ("miss", "hit", "hit", "hit"):
            conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                         "VALUES (%s, %s, 'a', %s)", (venue.id, once, outcome))
        conn.commit()
    return {"once": once, "reseated": reseated, "moved": moved, "repeated": repeated}


def test_bookings_with_several_rows_are_counted_and_sorted_by_why(head_db: Database, history):
    with head_db.connect() as conn:
        data = analysis.analyze(conn)
    assert (data["bookings"], data["evidence_rows"], data["bookings_with_several_rows"],
            data["most_rows_for_one_booking"]) == (4, 7, 3, 2)
    assert {why: (g["bookings"], g["rows"], g["sample_booking_ids"]) for why, g in data["why"].items()} == {
        "reassigned": (1, 2, [str(history["reseated"])]),
        "rescheduled": (1, 2, [str(history["moved"])]),
        "repeated": (1, 2, [str(history["repeated"])]),
    }


def test_cache_hit_rate_is_computed_from_the_durable_events(head_db: Database, history):
    with head_db.connect() as conn:
        cache = analysis.analyze(conn)["cache"]
    assert (cache["hits_7d"], cache["misses_7d"], cache["hit_ratio_7d"]) == (3, 1, 0.75)


def test_cli_json_carries_the_numbers_the_warning_and_the_recommendation(head_db: Database, history):
    result = run(head_db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["facts"]["bookings_with_several_rows"] == 3
    assert checks["retries under a fresh key"]["status"] == "warn"
    assert checks["retries under a fresh key"]["data"]["sample_booking_ids"] == [str(history["repeated"])]
    assert checks["cache hit rate"]["data"]["hit_ratio_7d"] == 0.75
    assert checks["recommendation"]["detail"].startswith("do not add UNIQUE (booking_id)")


def test_cli_text_names_the_categories(head_db: Database, history):
    result = run(head_db)
    assert result.exit_code == 0
    assert "3 of 4 bookings: 1 reassigned, 1 rescheduled, 1 repeated" in result.output


def test_a_database_without_evidence_is_reported_not_crashed(baseline_db: Database):
    result = run(baseline_db)
    assert result.exit_code == 0 and "does not exist at this revision" in result.output


def test_an_unreachable_database_exits_2():
    result = CliRunner().invoke(main, ["analyze", "confirmations"],
                                env={"DATABASE_URL": "postgresql://nobody:Analysis-Secret@127.0.0.1:1/none"})
    assert result.exit_code == 2 and "Analysis-Secret" not in result.output


def test_the_decision_a_unique_booking_id_would_roll_back_a_legitimate_reassignment(head_db: Database):
    """Why the recommendation says no: with UNIQUE (booking_id), re-seating a confirmed booking under a new
    key fails inside confirm_hold_assignment_tx and the whole confirmation is rolled back."""
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        _confirm(conn, venue, booking, [venue.tables[0]], 24, "first")
        conn.execute("ALTER TABLE booking_confirmation_results ADD CONSTRAINT one_row_per_booking UNIQUE (booking_id)")
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation, match="one_row_per_booking"):
            _confirm(conn, venue, booking, [venue.tables[1]], 24, "second")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM booking_table_assignments WHERE table_id = %s",
                            (venue.tables[1],)).fetchone()[0] == 0
