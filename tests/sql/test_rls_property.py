"""Tenant isolation at head, as a property: for any set of restaurants and rows, and any tenant context,
service_role reads and writes exactly the rows of that tenant in every RLS-enabled table, and a row
naming another tenant is refused with SQLSTATE 42501. Then, case by case: global feature flag overrides
are readable by every venue and writable by none, and a row of the tenant may name (booking, zone,
allocation, table, hold) only rows of that same tenant.

One database per test; every generated example lives in one transaction that is rolled back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Database, act_as, scalar
from tests.tenants import (
    CROSS_REFERENCES,
    OWNER,
    REFERENCING_TABLES,
    Shape,
    Tenant,
    build,
    refused_sqlstate,
)

# Children before parents, so that deleting every visible row never trips a NO ACTION foreign key.
DELETE_ORDER = [
    "confirmation_cache_events", "booking_confirmation_results", "capacity_outbox", "booking_assignment_idempotency",
    "booking_table_assignments", "table_hold_members", "table_holds", "allocations", "booking_state_history",
    "table_adjacencies", "feature_flag_overrides", "bookings", "table_inventory", "zones", "restaurants",
]
# A row of another tenant ("o_" parameters), for every table.
FOREIGN_INSERTS = {
    "restaurants": "INSERT INTO restaurants (id, name) VALUES (gen_random_uuid(), 'Intruder')",
    "zones": "INSERT INTO zones (restaurant_id, name) VALUES (%(o_restaurant)s, 'X')",
    "table_inventory": "INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity) "
                       "VALUES (%(o_restaurant)s, %(o_zone)s, 'X', 2)",
    "table_adjacencies": "INSERT INTO table_adjacencies (table_a, table_b) VALUES (%(o_table_last)s, %(o_table0)s)",
    "bookings": "INSERT INTO bookings (restaurant_id) VALUES (%(o_restaurant)s)",
    "booking_state_history": "INSERT INTO booking_state_history (booking_id, to_status) VALUES (%(o_booking)s, 'cancelled')",
    "allocations": "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, \"window\") "
                   "VALUES (%(o_booking)s, %(o_restaurant)s, 'table', gen_random_uuid(), "
                   "tstzrange(now() + interval '900 hours', now() + interval '901 hours'))",
    "table_holds": "INSERT INTO table_holds (restaurant_id, start_at, end_at, expires_at) "
                   "VALUES (%(o_restaurant)s, now(), now() + interval '1 hour', now() + interval '10 minutes')",
    "table_hold_members": "INSERT INTO table_hold_members (hold_id, table_id) VALUES (%(o_hold)s, %(o_table_last)s)",
    "booking_table_assignments": "INSERT INTO booking_table_assignments (booking_id, table_id) "
                                 "VALUES (%(o_booking)s, %(o_table_last)s)",
    "booking_assignment_idempotency": "INSERT INTO booking_assignment_idempotency "
                                      "(booking_id, idempotency_key, table_set_hash, table_ids, assignment_window) "
                                      "VALUES (%(o_booking)s, 'intruder', 'h', ARRAY[%(o_table0)s]::uuid[], "
                                      "tstzrange(now(), now() + interval '1 hour'))",
    "capacity_outbox": "INSERT INTO capacity_outbox (event_type, dedupe_key, restaurant_id, payload) "
                       "VALUES ('x', gen_random_uuid()::text, %(o_restaurant)s, '{}')",
    "feature_flag_overrides": "INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
                              "VALUES (%(o_restaurant)s, 'intruder.flag', 'on')",
    "booking_confirmation_results": "INSERT INTO booking_confirmation_results "
                                    "(booking_id, hold_id, restaurant_id, idempotency_key, table_ids, assignment_window) "
                                    "VALUES (%(o_booking)s, gen_random_uuid(), %(o_restaurant)s, 'intruder', "
                                    "ARRAY[%(o_table0)s]::uuid[], tstzrange(now(), now() + interval '1 hour'))",
    "confirmation_cache_events": "INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, "
                                 "outcome) VALUES (%(o_restaurant)s, %(o_booking)s, 'intruder', 'hit')",
}
TABLES = list(OWNER)

WORLDS = 25  # random tenant worlds per run (docs/RELIABILITY.md says how many)


shapes = st.builds(
    Shape,
    tables=st.integers(2, 4),
    bookings=st.integers(1, 3),
    holds=st.integers(1, 2),
    confirmed=st.integers(0, 3),
    cache_events=st.integers(0, 2),
    flag=st.booleans(),
)


def rows_of(conn: psycopg.Connection[Any], table: str, restaurant: uuid.UUID) -> list[str]:
    """As the owner: the rows of ``table`` that belong to ``restaurant``, as text."""
    return [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t WHERE {OWNER[table]} = %s ORDER BY 1",
                                       (restaurant,))]


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {table: scalar(conn, f"SELECT count(*) FROM {table}") for table in TABLES}


@pytest.fixture
def conn(head_db: Database) -> Iterator[psycopg.Connection[Any]]:
    with head_db.connect(autocommit=True) as connection:
        yield connection


def test_the_property_covers_every_rls_enabled_table_at_head(conn):
    enabled = {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relrowsecurity")}
    assert enabled == set(OWNER) == set(DELETE_ORDER) == set(FOREIGN_INSERTS)
    assert "booking_confirmation_results" in enabled


@settings(max_examples=WORLDS, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), tenant_shapes=st.lists(shapes, min_size=2, max_size=4), global_flag=st.booleans())
def test_service_role_reads_and_writes_only_the_rows_of_the_tenant_in_context(conn, data, tenant_shapes, global_flag):
    with conn.transaction(force_rollback=True):
        tenants = [build(conn, n, shape) for n, shape in enumerate(tenant_shapes)]
        if global_flag:
            conn.execute("INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('capacity.global', 'off')")
        # The context: one of the restaurants, or a uuid no restaurant has.
        me = data.draw(st.sampled_from([*(t.id for t in tenants), uuid.UUID(int=7)]), label="context")
        other = data.draw(st.sampled_from([t for t in tenants if t.id != me]), label="other tenant")
        mine = {table: rows_of(conn, table, me) for table in TABLES}
        privileges = {table: {p for p in ("UPDATE", "DELETE")
                              if scalar(conn, "SELECT has_table_privilege('service_role', %s, %s)", (table, p))}
                      for table in TABLES}
        before = counts(conn)
        foreign = {table: before[table] - len(mine[table]) for table in TABLES}  # global flags counted as foreign

        act_as(conn, "service_role", me)
        for table in TABLES:  # reads: exactly my rows (plus the global flags, readable by every venue)
            visible = [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1")]
            if table == "feature_flag_overrides":
                visible = [r[0] for r in conn.execute(
                    "SELECT t::text FROM feature_flag_overrides t WHERE restaurant_id IS NOT NULL ORDER BY 1")]
                assert scalar(conn, "SELECT count(*) FROM feature_flag_overrides WHERE restaurant_id IS NULL") == int(
                    global_flag)
            assert visible == mine[table], table

        for table in TABLES:  # inserts naming another tenant: refused
            assert refused_sqlstate(conn, FOREIGN_INSERTS[table], other.params("o")) == "42501", table

        for table in TABLES:  # updates reach my rows only
            if "UPDATE" not in privileges[table]:
                assert refused_sqlstate(conn, f"UPDATE {table} SET {_any_column(table)} = {_any_column(table)}") == "42501"
                continue
            column = _any_column(table)
            updated = conn.execute(f"UPDATE {table} SET {column} = {column}").rowcount  # global flags: not mine
            assert updated == len(mine[table]), table

        with conn.transaction(force_rollback=True):  # deletes reach my rows only
            for table in DELETE_ORDER:
                if "DELETE" not in privileges[table]:
                    continue
                deleted = conn.execute(f"DELETE FROM {table}").rowcount
                assert deleted <= len(mine[table]), table  # fewer when a cascade got there first
            conn.execute("RESET ROLE")
            after = counts(conn)
            for table in TABLES:
                remaining_foreign = after[table] - scalar(conn, f"SELECT count(*) FROM {table} t WHERE {OWNER[table]} = %s",
                                                        (me,))
                assert remaining_foreign == foreign[table], table
                assert scalar(conn, f"SELECT count(*) FROM {table} t WHERE {OWNER[table]} = %s", (me,)) == 0 or (
                    "DELETE" not in privileges[table]), table


def _any_column(table: str) -> str:
    """A column to rewrite with its own value (a no-op update that still passes through the policy)."""
    return {"restaurants": "name", "table_adjacencies": "created_at", "table_hold_members": "table_id",
            "booking_assignment_idempotency": "table_set_hash", "confirmation_cache_events": "outcome"}.get(
        table, "restaurant_id" if "restaurant_id" in OWNER[table] and OWNER[table].startswith("t.") else "booking_id")



# ---------------------------------------------------------------- global flags, and rows naming another tenant's


def test_service_role_can_neither_write_nor_take_over_a_global_feature_flag_override(conn):
    with conn.transaction(force_rollback=True):
        tenant = build(conn, 0, Shape(tables=2, bookings=1, holds=1, confirmed=0, cache_events=0, flag=True))
        conn.execute("INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('capacity.global', 'off')")
        act_as(conn, "service_role", tenant.id)
        assert scalar(conn, "SELECT count(*) FROM feature_flag_overrides WHERE restaurant_id IS NULL") == 1  # readable
        deleted = conn.execute("DELETE FROM feature_flag_overrides WHERE restaurant_id IS NULL").rowcount
        assert deleted == 0
        assert conn.execute("UPDATE feature_flag_overrides SET flag_value = 'on' WHERE restaurant_id IS NULL").rowcount == 0
        assert conn.execute("UPDATE feature_flag_overrides SET restaurant_id = %s WHERE restaurant_id IS NULL",
                            (tenant.id,)).rowcount == 0  # no taking it over as the venue's own either
        assert refused_sqlstate(conn, "INSERT INTO feature_flag_overrides (flag_key, flag_value) "
                                      "VALUES ('capacity.other', 'on')") == "42501"
        # The venue's own override stays fully writable.
        assert conn.execute("UPDATE feature_flag_overrides SET enabled = false WHERE restaurant_id = %s",
                            (tenant.id,)).rowcount == 1
        assert conn.execute("DELETE FROM feature_flag_overrides WHERE restaurant_id = %s", (tenant.id,)).rowcount == 1
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT flag_value, enabled FROM feature_flag_overrides WHERE restaurant_id IS NULL"
                            ).fetchall() == [("off", True)]



def test_every_foreign_key_from_one_tenant_table_to_another_is_a_cross_reference_case(conn):
    """Read from the catalog at head, not restated: a key that names another tenant's row (any table with RLS but
    restaurants itself) must have a case below, or a new one would go unchecked."""
    keys = {row[0] for row in conn.execute(
        "SELECT DISTINCT c.relname || '.' || a.attname FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) "
        "WHERE k.contype = 'f' AND n.nspname = 'public' AND c.relrowsecurity AND r.relrowsecurity "
        "  AND r.relname <> 'restaurants' AND a.attname <> 'restaurant_id'")}
    # Where a table has no restaurant_id, its row's restaurant is read through this key (its policy's USING):
    # it defines whose row it is, rather than naming another tenant's.
    owners = {"table_adjacencies.table_a", "booking_table_assignments.booking_id",
              "booking_assignment_idempotency.booking_id"}
    assert owners <= keys and keys - owners <= {case.split(" ")[0] for case in CROSS_REFERENCES}
    assert {case.split(".")[0] for case in CROSS_REFERENCES} == REFERENCING_TABLES <= set(TABLES)


@pytest.fixture
def mine_and_theirs(conn) -> Iterator[tuple[Tenant, Tenant]]:
    """Two restaurants with a row in every tenant table (one confirmed booking each), rolled back afterwards."""
    shape = Shape(tables=3, bookings=1, holds=1, confirmed=1, cache_events=1, flag=False)
    with conn.transaction(force_rollback=True):
        yield build(conn, 0, shape), build(conn, 1, shape)


@pytest.mark.parametrize("case", CROSS_REFERENCES)
def test_service_role_cannot_attach_its_rows_to_another_restaurants_rows(conn, mine_and_theirs, case):
    mine, theirs = mine_and_theirs
    statement = CROSS_REFERENCES[case]
    act_as(conn, "service_role", mine.id)
    assert refused_sqlstate(conn, statement, {**mine.params("m"), **theirs.params("r")}) == "42501"
    # The same write naming my own row goes through (an update rewrites my row with its own value).
    with conn.transaction(force_rollback=True):
        assert conn.execute(statement, {**mine.params("m"), **mine.params("r")}).rowcount >= 1
