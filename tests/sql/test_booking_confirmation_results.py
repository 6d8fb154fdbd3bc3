"""booking_confirmation_results at head: tenant isolation and grants."""

from __future__ import annotations

import psycopg
import pytest

from tests.support import Database, Venue, confirm, slot

POLICY = "Tenant service role can manage booking confirmation results"


@pytest.fixture
def two_venues_with_evidence(head_db: Database):
    with head_db.connect() as conn:
        venues = [Venue(conn, "A"), Venue(conn, "B")]
        for venue in venues:
            for i in range(2):
                booking = venue.booking(slot(24 + 3 * i))
                confirm(conn, venue.hold([venue.tables[i]], slot(24 + 3 * i)), booking, key=f"k{i}")
        conn.commit()
    return [v.id for v in venues]


def test_service_role_sees_and_changes_only_its_restaurants_evidence(head_db: Database, two_venues_with_evidence):
    mine, theirs = two_venues_with_evidence
    with head_db.connect() as conn:
        conn.execute("SET ROLE service_role")
        conn.execute("SELECT set_restaurant_context(%s)", (mine,))
        seen = conn.execute("SELECT DISTINCT restaurant_id FROM booking_confirmation_results").fetchall()
        assert seen == [(mine,)]
        assert conn.execute("UPDATE booking_confirmation_results SET metadata = '{}'").rowcount == 2
        assert conn.execute("DELETE FROM booking_confirmation_results WHERE restaurant_id = %s", (theirs,)).rowcount == 0


def test_service_role_cannot_forge_another_restaurants_evidence(head_db: Database, two_venues_with_evidence):
    mine, theirs = two_venues_with_evidence
    with head_db.connect() as conn:
        booking = conn.execute("SELECT id FROM bookings WHERE restaurant_id = %s LIMIT 1", (theirs,)).fetchone()[0]
        conn.execute("SET ROLE service_role")
        conn.execute("SELECT set_restaurant_context(%s)", (mine,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO booking_confirmation_results (booking_id, hold_id, restaurant_id, idempotency_key, "
                "table_ids, assignment_window) VALUES (%s, gen_random_uuid(), %s, 'forged', '{}', "
                "tstzrange(now(), now() + interval '1 hour'))",
                (booking, theirs),
            )


def test_without_restaurant_context_service_role_gets_42501(head_db: Database, two_venues_with_evidence):
    with head_db.connect() as conn:
        conn.execute("SET ROLE service_role")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Restaurant context is required"):
            conn.execute("SELECT count(*) FROM booking_confirmation_results").fetchone()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_anon_and_authenticated_get_nothing(head_db: Database, two_venues_with_evidence, role: str):
    mine, _ = two_venues_with_evidence
    with head_db.connect() as conn:
        conn.execute(f"SET ROLE {role}")
        conn.execute("SELECT set_config('app.restaurant_id', %s, true)", (str(mine),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM booking_confirmation_results")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_confirm_hold_assignment_tx_is_not_executable_by(head_db: Database, role: str):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking, hold = venue.booking(), venue.hold([venue.tables[0]])
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            confirm(conn, hold, booking)


def test_table_has_the_spec_policy_rls_and_grants(head_db: Database):
    with head_db.connect() as conn:
        rls = conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.booking_confirmation_results'::regclass"
        ).fetchone()[0]
        policies = conn.execute(
            "SELECT policyname, roles::text[], cmd FROM pg_policies WHERE tablename = 'booking_confirmation_results'"
        ).fetchall()
        grants = {
            role: [p for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
                   if conn.execute("SELECT has_table_privilege(%s, 'public.booking_confirmation_results', %s)",
                                   (role, p)).fetchone()[0]]
            for role in ("service_role", "anon", "authenticated")
        }
    assert rls is True
    assert policies == [(POLICY, ["service_role"], "ALL")]
    assert grants == {"service_role": ["SELECT", "INSERT", "UPDATE", "DELETE"], "anon": [], "authenticated": []}


def test_lookups_by_booking_and_by_checked_at_are_served_by_indexes(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        for where in ("booking_id = '00000000-0000-0000-0000-000000000001'", "checked_at < now() - interval '30 days'"):
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM booking_confirmation_results WHERE {where}"))
            assert "Index" in plan, plan
