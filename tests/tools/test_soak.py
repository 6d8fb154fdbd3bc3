"""The live-traffic soak (tools.soak), reduced: the swap, its rollback and the swap again while two
workers confirm holds, then the invariants. Also: the checks it relies on do fail on a broken database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest

from reserve.schema import guards
from tests.support import REVISIONS, Database, Venue, confirm, slot
from tools import soak

EXPECTED_PHASES = [
    "before", "during upgrade head", "after upgrade head", "during downgrade -1", "after downgrade -1",
    "during upgrade head again", "after upgrade head again",
]
EXPECTED_SQLSTATES = {"23P01", "P0001", *soak.RETRYABLE}


def test_confirmations_flow_through_swap_rollback_and_swap_with_every_invariant_kept(empty_db: Database):
    soak.prepare(empty_db.url, rows=3_000)
    result = soak.run_soak(empty_db.url, workers=2, phase_seconds=2.0, overlap_every=5,
                           alembic_x=["swap_lock_timeout=2s", "swap_lock_attempts=5"])
    report = result.render()

    assert [s.name for s in result.steps] == [name for name, _ in soak.CHAIN], report
    assert all(s.ok for s in result.steps), report
    assert [p.name for p in result.phases] == EXPECTED_PHASES, report
    assert all(p.confirmations > 0 and p.confirmations_per_s > 0 for p in result.phases), report
    # The deliberate overlaps were rejected under both guards: at commit by the old one (23P01 on its
    # constraint), inside the call by the new one (P0001 allocations_no_overlap).
    assert result.rejected_overlaps > 0, report
    assert {"23P01", "P0001"} <= set(result.errors_by_sqlstate), report
    assert set(result.errors_by_sqlstate) <= EXPECTED_SQLSTATES, report
    assert result.unexpected_errors == [], report
    assert result.invariants == soak.Invariants(0, 0, 0, 0, 0, 0), report
    assert result.final_revision == REVISIONS[-1] and result.catalog_drift == [], report
    assert result.problems == [] and result.ok, report
    # The phases tile the run: every confirmation falls in one, except the call each worker had in flight at stop.
    assert 0 <= result.confirmations - sum(p.confirmations for p in result.phases) <= result.workers
    assert 0 < result.longest_stall_s < 30, report

    document = json.loads(result.to_json())
    assert document["ok"] is True and len(document["phases"]) == len(EXPECTED_PHASES)


def test_the_invariant_checks_catch_overlaps_lost_rows_and_missing_or_phantom_evidence(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        venue = Venue(conn, tables=2)
        before = soak.live_allocations(conn)
        kept, emptied = venue.booking(slot(30)), venue.booking(slot(40))
        confirm(conn, venue.hold([venue.tables[0]], slot(30), booking=kept), kept, key="soak-t-0-0", status="confirmed")
        confirm(conn, venue.hold([venue.tables[0]], slot(40), booking=emptied), emptied, key="soak-t-0-1",
                status="confirmed")
        claimed = [(str(kept), "soak-t-0-0"), (str(emptied), "soak-t-0-1")]
        assert soak.check_invariants(conn, claimed, "t", before) == soak.Invariants(0, 0, 0, 0, 0, 0)

        conn.execute("DELETE FROM allocations WHERE booking_id = %s", (emptied,))  # a confirmed booking loses its row
        conn.execute(f"ALTER TABLE allocations DROP CONSTRAINT {guards.NEW_GUARD.name}")
        conn.execute('INSERT INTO allocations (restaurant_id, resource_type, resource_id, "window") '
                     "VALUES (%s, 'table', %s, tstzrange(%s, %s))", (venue.id, venue.tables[0], *slot(31)))
        # A success the database has no trace of: no evidence, and (with the row deleted and the overlap
        # added) one allocation short of before + 3.
        claimed.append((str(venue.booking()), "soak-t-0-2"))
        conn.execute("UPDATE booking_confirmation_results SET idempotency_key = 'soak-t-9-9' WHERE booking_id = %s",
                     (kept,))  # evidence nobody confirmed, and a confirmation without its evidence
        found = soak.check_invariants(conn, claimed, "t", before)
    assert found == soak.Invariants(overlapping_pairs=1, missing_evidence=2, phantom_evidence=1,
                                    confirmed_without_allocation=1, allocations_lost=1, allocations_extra=0)
    assert len(found.problems()) == 5


def test_errors_are_classified_by_sqlstate_constraint_and_whether_the_overlap_was_deliberate(baseline_db: Database):
    baseline_db.upgrade(soak.BEFORE_HEAD)
    with baseline_db.connect(autocommit=True) as conn:
        venue = Venue(conn, tables=1)

        def confirm_error(window: tuple[datetime, datetime]) -> psycopg.Error:
            booking = venue.booking(window)
            hold = venue.hold(venue.tables, window, booking=booking)
            with pytest.raises(psycopg.Error) as caught:
                confirm(venue.conn, hold, booking, key=str(booking))
            venue.conn.execute("DELETE FROM table_holds WHERE id = %s", (hold,))  # released, as a client does
            return caught.value

        first = venue.booking(slot(10))
        confirm(conn, venue.hold(venue.tables, slot(10), booking=first), first)
        old_guard = confirm_error(slot(11))  # deferred: raised at commit
        assert (old_guard.sqlstate, old_guard.diag.constraint_name) == ("23P01", guards.OLD_GUARD.name)
        with pytest.raises(psycopg.Error) as timeout:
            conn.execute("SET statement_timeout = '10ms'; SELECT pg_sleep(1)")
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(psycopg.Error) as undefined:
            conn.execute("SELECT * FROM no_such_table")
    baseline_db.upgrade("head")
    with baseline_db.connect(autocommit=True) as conn:
        venue.conn = conn
        new_guard = confirm_error(slot(11))  # immediate: raised inside the call
        assert (new_guard.sqlstate, new_guard.diag.message_primary) == ("P0001", guards.NEW_GUARD.name)

    assert soak.classify(old_guard, overlap_item=True) == "rejected"
    assert soak.classify(new_guard, overlap_item=True) == "rejected"
    assert soak.classify(old_guard, overlap_item=False) == "unexpected"
    assert soak.classify(new_guard, overlap_item=False) == "unexpected"
    assert soak.classify(timeout.value, overlap_item=False) == "retryable"
    assert soak.classify(undefined.value, overlap_item=True) == "unexpected"


def test_work_items_never_collide_and_deliberate_overlaps_sit_on_generated_allocations():
    tables = [(f"r{i // 20}", f"z{i // 10}", f"t{i}") for i in range(40)]
    day0 = datetime(2030, 1, 1, tzinfo=UTC)
    plans = [soak.WorkerPlan(i, 3, tables, day0, 4, 10, 0.0, "1s", "tag", dsn="") for i in range(3)]
    items = [plan.item(j) for plan in plans for j in range(200)]
    ordinary = [(table, start) for overlap, (_, _, table), start, _ in items if not overlap]
    assert len(ordinary) == len(set(ordinary)) == 3 * 150
    assert all(start.hour == 12 and (start - day0).days >= 60 for _, start in ordinary)
    for overlap, _, start, end in items:
        if overlap:  # across the generated 18:00-20:00 allocation of a day in 1..50
            assert 1 <= (start - day0).days <= 50 and start.hour == 19 and (end - start).seconds == 7200
