"""The soak's invariant checks (tools.soak.checks) do fail on a broken database."""

from __future__ import annotations

from reserve.schema import guards
from tests.support import Database, Venue, confirm, slot
from tools.soak.checks import Invariants, check_invariants, live_allocations


def test_the_invariant_checks_catch_overlaps_lost_rows_and_missing_or_phantom_evidence(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        venue = Venue(conn, tables=2)
        before = live_allocations(conn)
        kept, emptied = venue.booking(slot(30)), venue.booking(slot(40))
        confirm(conn, venue.hold([venue.tables[0]], slot(30), booking=kept), kept, key="soak-t-0-0", status="confirmed")
        confirm(conn, venue.hold([venue.tables[0]], slot(40), booking=emptied), emptied, key="soak-t-0-1",
                status="confirmed")
        claimed = [(str(kept), "soak-t-0-0"), (str(emptied), "soak-t-0-1")]
        assert check_invariants(conn, claimed, "t", before) == Invariants(0, 0, 0, 0, 0, 0)

        conn.execute("DELETE FROM allocations WHERE booking_id = %s", (emptied,))  # a confirmed booking loses its row
        conn.execute(f"ALTER TABLE allocations DROP CONSTRAINT {guards.NEW_GUARD.name}")
        conn.execute('INSERT INTO allocations (restaurant_id, resource_type, resource_id, "window") '
                     "VALUES (%s, 'table', %s, tstzrange(%s, %s))", (venue.id, venue.tables[0], *slot(31)))
        # A success the database has no trace of: no evidence, and (with the row deleted and the overlap
        # added) one allocation short of before + 3.
        claimed.append((str(venue.booking()), "soak-t-0-2"))
        conn.execute("UPDATE booking_confirmation_results SET idempotency_key = 'soak-t-9-9' WHERE booking_id = %s",
                     (kept,))  # evidence nobody confirmed, and a confirmation without its evidence
        found = check_invariants(conn, claimed, "t", before)
    assert found == Invariants(overlapping_pairs=1, missing_evidence=2, phantom_evidence=1,
                               confirmed_without_allocation=1, allocations_lost=1, allocations_extra=0)
    assert len(found.problems()) == 5
