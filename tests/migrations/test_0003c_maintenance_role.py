"""Revision 0003c_maintenance_role: retention becomes platform work. Before it, any venue's service_role could
purge every venue's old evidence through the SECURITY DEFINER purge; after it, only reserve_maintenance may."""

from __future__ import annotations

import psycopg
import pytest

from reserve.operations import retention
from tests.support import Database, Venue, act_as, scalar, slot

BEFORE, THIS = "0003b_tenant_policies", "0003c_maintenance_role"
PURGE = "SELECT * FROM public.purge_booking_confirmation_results(now() - interval '30 days', 100)"


def _old_evidence(db: Database) -> tuple[Venue, Venue]:
    """Two venues, each with one confirmation evidence row 40 days old."""
    with db.connect() as conn:
        venues = Venue(conn, "A"), Venue(conn, "B")
        for venue in venues:
            booking = venue.booking(slot(24))
            conn.execute(
                "INSERT INTO booking_confirmation_results (booking_id, hold_id, restaurant_id, idempotency_key, "
                "table_ids, assignment_window, checked_at) VALUES (%s, gen_random_uuid(), %s, 'old', ARRAY[%s]::uuid[], "
                "tstzrange(%s, %s), now() - interval '40 days')", (booking, venue.id, venue.tables[0], *slot(24)))
        conn.commit()
    return venues


def _evidence_of(db: Database, venue: Venue) -> int:
    with db.connect() as conn:
        return scalar(conn, "SELECT count(*) FROM booking_confirmation_results WHERE restaurant_id = %s", (venue.id,))


def test_before_it_one_venue_purges_every_venues_evidence(baseline_db: Database):
    """The finding this revision fixes, reproduced: A's context, B's rows gone."""
    baseline_db.upgrade(BEFORE)
    a, b = _old_evidence(baseline_db)
    with baseline_db.connect() as conn:
        act_as(conn, "service_role", a.id)
        assert conn.execute(PURGE).fetchone()[0] == 2
        conn.commit()
    assert _evidence_of(baseline_db, b) == 0


def test_after_it_service_role_is_refused_and_the_maintenance_role_purges(baseline_db: Database):
    baseline_db.upgrade(THIS)
    a, b = _old_evidence(baseline_db)
    with baseline_db.connect() as conn:
        act_as(conn, "service_role", a.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
            conn.execute(PURGE)
        conn.rollback()
        conn.execute("SET LOCAL ROLE reserve_maintenance")
        assert conn.execute(PURGE).fetchone()[0] == 2
        conn.commit()
    assert _evidence_of(baseline_db, a) == _evidence_of(baseline_db, b) == 0


def test_the_maintenance_role_logs_in_nowhere_bypasses_nothing_and_the_migrating_role_may_act_as_it(
        baseline_db: Database):
    baseline_db.upgrade(THIS)
    with baseline_db.connect() as conn:
        login, bypass = conn.execute("SELECT rolcanlogin, rolbypassrls FROM pg_roles "
                                     "WHERE rolname = 'reserve_maintenance'").fetchone()
        assert (login, bypass) == (False, False)
        assert scalar(conn, "SELECT pg_has_role(current_user, 'reserve_maintenance', 'MEMBER')")


def test_reserve_retention_runs_the_purge_as_the_maintenance_role(head_db: Database):
    _old_evidence(head_db)
    report = retention.purge(head_db.url, "30 days")
    assert report.facts["role"] == "reserve_maintenance"
    assert report.facts["evidence_rows"] == 2


def test_the_downgrade_gives_execute_back_and_keeps_the_role(baseline_db: Database):
    baseline_db.upgrade(THIS)
    baseline_db.downgrade(BEFORE)
    with baseline_db.connect() as conn:
        assert scalar(conn, "SELECT has_function_privilege('service_role', "
                            "'public.purge_booking_confirmation_results(timestamptz, integer, boolean)', 'EXECUTE')")
        assert scalar(conn, "SELECT count(*) FROM pg_roles WHERE rolname = 'reserve_maintenance'") == 1
