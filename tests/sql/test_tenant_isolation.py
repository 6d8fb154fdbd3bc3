"""Tenant isolation at revision 0001_baseline: RLS scoped by the restaurant context for
service_role, nothing at all for anon and authenticated, and the context functions themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.support import (
    BASELINE_ROW_OWNER,
    NOTHING_WRITTEN,
    Database,
    Venue,
    act_as,
    assign_tables,
    booking_rows,
    confirm,
    scalar,
    slot,
    sqlstate_of,
)

# Every tenant table, with the expression (over alias t) naming the restaurant a row belongs to.
OWNER = {
    **BASELINE_ROW_OWNER,
    # Global overrides (restaurant_id NULL) are visible to every venue.
    "feature_flag_overrides": "COALESCE(t.restaurant_id, %(me)s)",
}
TABLES = list(OWNER)

FUNCTIONS = [
    "current_restaurant_id()",
    "require_restaurant_context()",
    "set_restaurant_context(uuid)",
    "apply_booking_state_transition(uuid, booking_status, uuid, text, jsonb)",
    "assign_tables_atomic_v2(uuid, uuid[], text, boolean, uuid, timestamptz, timestamptz)",
    "confirm_hold_assignment_tx(uuid, uuid, text, boolean, uuid, timestamptz, timestamptz, text, text, "
    "booking_status, text, jsonb, uuid)",
]


@dataclass
class Tenant:
    """A restaurant with a row in every tenant table: a confirmed (merged) booking with its
    history, allocations, assignments, idempotency row and outbox events; a second booking
    waiting on a live hold; an adjacency; a feature flag override."""

    venue: Venue
    booking: uuid.UUID
    waiting: uuid.UUID
    hold: uuid.UUID

    @classmethod
    def build(cls, conn: psycopg.Connection, name: str) -> Tenant:
        venue = Venue(conn, name)
        venue.connect_tables(venue.tables[0], venue.tables[1])
        booking = venue.booking(slot(24))
        confirm(conn, venue.hold(venue.tables[:2], slot(24), booking=booking), booking, key=f"{name}-key",
                status="confirmed")
        waiting = venue.booking(slot(48))
        hold = venue.hold([venue.tables[2]], slot(48), booking=waiting)
        conn.execute("INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
                      "VALUES (%s, 'capacity.v12', 'on')", (venue.id,))
        return cls(venue, booking, waiting, hold)

    @property
    def id(self) -> uuid.UUID:
        return self.venue.id

    def params(self, prefix: str) -> dict[str, Any]:
        v = self.venue
        return {f"{prefix}_restaurant": v.id, f"{prefix}_zone": v.zone, f"{prefix}_table": v.tables[0],
                f"{prefix}_table2": v.tables[1], f"{prefix}_table3": v.tables[2], f"{prefix}_booking": self.booking,
                f"{prefix}_waiting": self.waiting, f"{prefix}_hold": self.hold}


@pytest.fixture
def tenants(baseline_db: Database) -> Iterator[tuple[psycopg.Connection, Tenant, Tenant]]:
    """Two restaurants, A and B, committed; plus one global feature flag override."""
    with baseline_db.connect() as conn:
        a, b = Tenant.build(conn, "A"), Tenant.build(conn, "B")
        conn.execute("INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('capacity.global', 'off')")
        conn.commit()
        yield conn, a, b


def _rows_of(conn: psycopg.Connection, table: str, restaurant: uuid.UUID) -> list[str]:
    """As the owner: the rows of ``table`` that belong to ``restaurant``, as text."""
    query = f"SELECT t::text FROM {table} t WHERE {OWNER[table]} = %(me)s ORDER BY 1"
    return [row[0] for row in conn.execute(query, {"me": restaurant}).fetchall()]


def _visible(conn: psycopg.Connection, table: str) -> list[str]:
    return [row[0] for row in conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()]


def _refused(conn: psycopg.Connection, statement: str, params: Any = None) -> str | None:
    """Run ``statement``, expect it to raise, roll back; the error's SQLSTATE."""
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(statement, params)
    conn.rollback()
    return sqlstate_of(raised)


# ---------------------------------------------------------------- service_role with a context


@pytest.mark.parametrize("table", TABLES)
def test_service_role_sees_only_the_rows_of_the_restaurant_in_context(tenants, table):
    conn, a, b = tenants
    everything = scalar(conn, f"SELECT count(*) FROM {table}")
    for tenant in (a, b):
        expected = _rows_of(conn, table, tenant.id)
        assert expected and len(expected) < everything  # both tenants have rows here
        act_as(conn, "service_role", tenant.id)
        assert _visible(conn, table) == expected
        conn.rollback()


def test_service_role_sees_global_feature_flag_overrides_but_not_other_venues(tenants):
    conn, a, _ = tenants
    act_as(conn, "service_role", a.id)
    rows = conn.execute("SELECT restaurant_id, flag_key FROM feature_flag_overrides ORDER BY flag_key").fetchall()
    assert rows == [(None, "capacity.global"), (a.id, "capacity.v12")]


REFUSED_INSERTS = {
    "restaurant": "INSERT INTO restaurants (name) VALUES ('Intruder')",
    "zone": "INSERT INTO zones (restaurant_id, name) VALUES (%(b_restaurant)s, 'X')",
    "table": "INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity) "
             "VALUES (%(b_restaurant)s, %(b_zone)s, 'X', 2)",
    "adjacency": "INSERT INTO table_adjacencies (table_a, table_b) VALUES (%(b_table2)s, %(b_table3)s)",
    "booking": "INSERT INTO bookings (restaurant_id) VALUES (%(b_restaurant)s)",
    "history": "INSERT INTO booking_state_history (booking_id, to_status) VALUES (%(b_booking)s, 'cancelled')",
    "allocation": "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, \"window\") "
                  "VALUES (%(b_waiting)s, %(b_restaurant)s, 'table', %(b_table3)s, "
                  "tstzrange(now() + interval '100 hours', now() + interval '101 hours'))",
    "hold": "INSERT INTO table_holds (restaurant_id, start_at, end_at, expires_at) "
            "VALUES (%(b_restaurant)s, now(), now() + interval '1 hour', now() + interval '10 minutes')",
    "hold-member": "INSERT INTO table_hold_members (hold_id, table_id) VALUES (%(b_hold)s, %(b_table)s)",
    "assignment": "INSERT INTO booking_table_assignments (booking_id, table_id) VALUES (%(b_waiting)s, %(b_table)s)",
    "idempotency": "INSERT INTO booking_assignment_idempotency "
                   "(booking_id, idempotency_key, table_set_hash, table_ids, assignment_window) "
                   "VALUES (%(b_booking)s, 'x', 'h', ARRAY[%(b_table)s]::uuid[], tstzrange(now(), now() + interval '1 hour'))",
    "outbox": "INSERT INTO capacity_outbox (event_type, dedupe_key, restaurant_id, payload) "
              "VALUES ('x', 'intruder', %(b_restaurant)s, '{}')",
    "flag": "INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
            "VALUES (%(b_restaurant)s, 'other.flag', 'on')",
    "global-flag": "INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('other.flag', 'on')",
    # Rows of the tenant in context that point at another tenant's table.
    "adjacency-to-other-tenant": "INSERT INTO table_adjacencies (table_a, table_b) VALUES (%(a_table3)s, %(b_table3)s)",
    "adjacency-from-other-tenant": "INSERT INTO table_adjacencies (table_a, table_b) "
                                   "VALUES (%(b_table3)s, %(a_table3)s)",
    "hold-member-of-other-tenant-table": "INSERT INTO table_hold_members (hold_id, table_id) "
                                         "VALUES (%(a_hold)s, %(b_table)s)",
    "assignment-of-other-tenant-table": "INSERT INTO booking_table_assignments (booking_id, table_id) "
                                        "VALUES (%(a_waiting)s, %(b_table)s)",
}


@pytest.mark.parametrize("statement", list(REFUSED_INSERTS.values()), ids=list(REFUSED_INSERTS))
def test_service_role_insert_for_another_restaurant_is_refused_with_42501(tenants, statement):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    assert _refused(conn, statement, {**a.params("a"), **b.params("b")}) == "42501"


ACCEPTED_INSERTS = {
    "zone": "INSERT INTO zones (restaurant_id, name) VALUES (%(a_restaurant)s, 'X')",
    "booking": "INSERT INTO bookings (restaurant_id) VALUES (%(a_restaurant)s)",
    "adjacency": "INSERT INTO table_adjacencies (table_a, table_b) VALUES (%(a_table2)s, %(a_table3)s)",
    "hold-member": "INSERT INTO table_hold_members (hold_id, table_id) VALUES (%(a_hold)s, %(a_table)s)",
    "assignment": "INSERT INTO booking_table_assignments (booking_id, table_id) VALUES (%(a_waiting)s, %(a_table3)s)",
    "flag": "INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
            "VALUES (%(a_restaurant)s, 'other.flag', 'on')",
}


@pytest.mark.parametrize("statement", list(ACCEPTED_INSERTS.values()), ids=list(ACCEPTED_INSERTS))
def test_service_role_insert_for_its_own_restaurant_is_accepted(tenants, statement):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    assert conn.execute(statement, {**a.params("a"), **b.params("b")}).rowcount == 1
    conn.rollback()


def test_service_role_cannot_move_its_row_to_another_restaurant(tenants):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    assert _refused(conn, "UPDATE bookings SET restaurant_id = %s WHERE id = %s", (b.id, a.booking)) == "42501"


def test_service_role_updates_and_deletes_do_not_reach_another_restaurants_rows(tenants):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    assert conn.execute("UPDATE bookings SET party_size = 9 WHERE restaurant_id = %s", (b.id,)).rowcount == 0
    assert conn.execute("DELETE FROM allocations WHERE restaurant_id = %s", (b.id,)).rowcount == 0
    assert conn.execute("DELETE FROM table_holds WHERE id = %s", (b.hold,)).rowcount == 0
    conn.commit()
    assert booking_rows(conn, b.booking)["allocations"] == 3
    assert scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (b.hold,)) == 1


# ---------------------------------------------------------------- service_role without a context


@pytest.mark.parametrize("table", TABLES)
def test_service_role_without_context_is_refused_with_42501(tenants, table):
    conn, _, _ = tenants
    act_as(conn, "service_role")
    assert _refused(conn, f"SELECT * FROM {table}") == "42501"


def test_cleared_context_is_refused_with_42501(tenants):
    conn, a, _ = tenants
    act_as(conn, "service_role", a.id)
    conn.execute("SELECT set_restaurant_context(NULL)")
    assert _refused(conn, "SELECT * FROM bookings") == "42501"


def test_context_is_transaction_local_and_gone_after_commit(tenants):
    conn, a, _ = tenants
    act_as(conn, "service_role", a.id)
    assert _visible(conn, "bookings")
    conn.commit()
    assert scalar(conn, "SELECT current_setting('app.restaurant_id', true)") in (None, "")
    act_as(conn, "service_role")
    assert _refused(conn, "SELECT * FROM bookings") == "42501"


def test_malformed_context_makes_rls_raise_22023_rather_than_read_as_no_tenant(tenants):
    conn, _, _ = tenants
    act_as(conn, "service_role")
    conn.execute("SELECT set_config('app.restaurant_id', 'restaurant-a', true)")
    assert _refused(conn, "SELECT * FROM bookings") == "22023"


# ---------------------------------------------------------------- the context functions


@pytest.mark.parametrize("value", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g"])
def test_current_restaurant_id_raises_22023_on_a_malformed_value(baseline_db: Database, value):
    with baseline_db.connect() as conn:
        conn.execute("SELECT set_config('app.restaurant_id', %s, true)", (value,))
        assert _refused(conn, "SELECT current_restaurant_id()") == "22023"


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_current_restaurant_id_is_null_when_empty_and_require_raises_42501(baseline_db: Database, value):
    with baseline_db.connect() as conn:
        assert scalar(conn, "SELECT current_restaurant_id()") is None  # never set
        conn.execute("SELECT set_config('app.restaurant_id', %s, true)", (value,))
        assert scalar(conn, "SELECT current_restaurant_id()") is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Restaurant context is required"):
            conn.execute("SELECT require_restaurant_context()")


def test_set_restaurant_context_sets_and_clears_the_tenant(baseline_db: Database):
    restaurant = uuid.uuid4()
    with baseline_db.connect() as conn:
        assert scalar(conn, "SELECT set_restaurant_context(%s)", (restaurant,)) == restaurant
        assert scalar(conn, "SELECT current_restaurant_id()") == restaurant
        assert scalar(conn, "SELECT require_restaurant_context()") == restaurant
        conn.execute("SELECT set_restaurant_context(NULL)")
        assert scalar(conn, "SELECT current_restaurant_id()") is None


# ---------------------------------------------------------------- the capacity functions under a context


def test_service_role_confirms_a_hold_of_its_own_restaurant(tenants):
    conn, a, _ = tenants
    act_as(conn, "service_role", a.id)
    rows = confirm(conn, a.hold, a.waiting, key="own")
    assert [row[1] for row in rows] == [a.venue.tables[2]]
    conn.commit()
    assert booking_rows(conn, a.waiting)["allocations"] == 1


def test_confirming_another_restaurants_hold_is_refused_with_42501_and_nothing_is_written(tenants):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        confirm(conn, b.hold, b.waiting, key="steal")
    conn.rollback()
    assert booking_rows(conn, b.waiting) == NOTHING_WRITTEN
    assert scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (b.hold,)) == 1


def test_assigning_or_moving_another_restaurants_booking_is_refused_with_42501(tenants):
    conn, a, b = tenants
    act_as(conn, "service_role", a.id)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        assign_tables(conn, b.waiting, [b.venue.tables[0]])
    conn.rollback()
    act_as(conn, "service_role", a.id)
    assert _refused(conn, "SELECT apply_booking_state_transition(%s, 'cancelled')", (b.booking,)) == "42501"
    assert booking_rows(conn, b.waiting) == NOTHING_WRITTEN
    assert scalar(conn, "SELECT status FROM bookings WHERE id = %s", (b.booking,)) == "confirmed"


# ---------------------------------------------------------------- anon and authenticated


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_anon_and_authenticated_are_denied_every_tenant_table_with_42501(tenants, role):
    conn, a, _ = tenants
    for table in TABLES:
        act_as(conn, role)
        conn.execute("SELECT set_config('app.restaurant_id', %s, true)", (str(a.id),))  # even with a context
        assert _refused(conn, f"SELECT * FROM {table}") == "42501", table


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_confirm_hold_assignment_tx_is_not_executable_by_anon_or_authenticated(tenants, role):
    conn, a, _ = tenants
    act_as(conn, role)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
        confirm(conn, a.hold, a.waiting, key="anon")
    conn.rollback()
    assert booking_rows(conn, a.waiting) == NOTHING_WRITTEN


@pytest.mark.parametrize("function", FUNCTIONS)
def test_baseline_functions_are_executable_by_service_role_only(baseline_db: Database, function):
    with baseline_db.connect() as conn:
        for role, allowed in [("service_role", True), ("anon", False), ("authenticated", False)]:
            assert scalar(conn, "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                          (role, f"public.{function}")) is allowed, role


def test_platform_roles_cannot_bypass_rls(baseline_db: Database):
    with baseline_db.connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolbypassrls, rolsuper FROM pg_roles "
            "WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY rolname"
        ).fetchall()
    assert rows == [("anon", False, False), ("authenticated", False, False), ("service_role", False, False)]


def test_supabase_default_privileges_do_not_open_baseline_functions_or_tables_to_anon(empty_db: Database):
    """Supabase grants anon and authenticated every new function and table in public by default
    privileges; the baseline must take those grants back, not only PUBLIC's."""
    with empty_db.connect(autocommit=True) as conn:
        for kind, privilege in [("FUNCTIONS", "EXECUTE"), ("TABLES", "ALL")]:
            conn.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {privilege} ON {kind} "
                         "TO anon, authenticated, service_role")
    empty_db.upgrade("0001_baseline")
    with empty_db.connect() as conn:
        for role in ("anon", "authenticated"):
            for function in FUNCTIONS:
                assert not scalar(conn, "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                                  (role, f"public.{function}")), (role, function)
            for table in TABLES:
                assert not scalar(conn, "SELECT has_table_privilege(%s, %s, 'SELECT, INSERT, UPDATE, DELETE')",
                                  (role, f"public.{table}")), (role, table)
