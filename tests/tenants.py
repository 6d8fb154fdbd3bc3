"""A world of restaurants for the tenant-isolation tests: rows in every tenant table, and the writes
that name another tenant's rows. Shared by tests/sql/test_rls_property.py, tests/schema/test_tenancy.py and
tests/migrations/test_0003b_tenant_policies.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.support import BASELINE_ROW_OWNER, NOW, scalar

# Every RLS-enabled table at head, with the expression (over alias t) naming the restaurant a row belongs to.
OWNER = {
    **BASELINE_ROW_OWNER,
    "feature_flag_overrides": "t.restaurant_id",  # global rows (NULL) are checked on their own
    "booking_confirmation_results": "t.restaurant_id",
    "confirmation_cache_events": "t.restaurant_id",
}


@dataclass
class Shape:
    """How many rows one restaurant gets."""

    tables: int
    bookings: int
    holds: int
    confirmed: int  # bookings (of the first ones) with allocations, assignments, idempotency, outbox and evidence
    cache_events: int
    flag: bool


@dataclass
class Tenant:
    id: uuid.UUID
    zone: uuid.UUID
    tables: list[uuid.UUID] = field(default_factory=list)
    bookings: list[uuid.UUID] = field(default_factory=list)
    holds: list[uuid.UUID] = field(default_factory=list)
    allocations: list[uuid.UUID] = field(default_factory=list)

    def params(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_restaurant": self.id, f"{prefix}_zone": self.zone, f"{prefix}_table0": self.tables[0],
                f"{prefix}_table_last": self.tables[-1], f"{prefix}_booking": self.bookings[0],
                f"{prefix}_hold": self.holds[0], f"{prefix}_allocation": next(iter(self.allocations), None)}


def build(conn: psycopg.Connection[Any], number: int, shape: Shape) -> Tenant:
    """One restaurant's rows in every tenant table, written as the table owner."""
    restaurant = scalar(conn, "INSERT INTO restaurants (name) VALUES (%s) RETURNING id", (f"R{number}",))
    zone = scalar(conn, "INSERT INTO zones (restaurant_id, name) VALUES (%s, 'Main') RETURNING id", (restaurant,))
    tenant = Tenant(restaurant, zone)
    for i in range(shape.tables):
        tenant.tables.append(scalar(
            conn, "INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity) "
                  "VALUES (%s, %s, %s, 4) RETURNING id", (restaurant, zone, f"T{i}")))
    conn.execute("INSERT INTO table_adjacencies (table_a, table_b) VALUES (%s, %s)", tenant.tables[:2])
    for b in range(shape.bookings):
        start = NOW + timedelta(days=1, hours=3 * b)
        end = start + timedelta(hours=2)
        booking = scalar(conn, "INSERT INTO bookings (restaurant_id, start_at, end_at) VALUES (%s, %s, %s) RETURNING id",
                       (restaurant, start, end))
        tenant.bookings.append(booking)
        conn.execute("INSERT INTO booking_state_history (booking_id, to_status) VALUES (%s, 'pending')", (booking,))
        if b < shape.confirmed:
            table = tenant.tables[b % len(tenant.tables)]
            window = f"[{start.isoformat()},{end.isoformat()})"
            allocation = scalar(
                conn, "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, \"window\") "
                      "VALUES (%s, %s, 'table', %s, %s::tstzrange) RETURNING id", (booking, restaurant, table, window))
            tenant.allocations.append(allocation)
            conn.execute("INSERT INTO booking_table_assignments (booking_id, table_id, allocation_id) "
                         "VALUES (%s, %s, %s)", (booking, table, allocation))
            conn.execute("INSERT INTO booking_assignment_idempotency "
                         "(booking_id, idempotency_key, table_set_hash, table_ids, assignment_window) "
                         "VALUES (%s, 'k', 'h', ARRAY[%s]::uuid[], %s::tstzrange)", (booking, table, window))
            conn.execute("INSERT INTO capacity_outbox (event_type, dedupe_key, restaurant_id, booking_id, payload) "
                         "VALUES ('capacity.hold.confirmed', %s, %s, %s, %s)",
                         (f"{booking}:confirmed", restaurant, booking, Jsonb({})))
            conn.execute("INSERT INTO booking_confirmation_results "
                         "(booking_id, hold_id, restaurant_id, idempotency_key, table_ids, assignment_window) "
                         "VALUES (%s, gen_random_uuid(), %s, 'k', ARRAY[%s]::uuid[], %s::tstzrange)",
                         (booking, restaurant, table, window))
    for h in range(shape.holds):
        hold = scalar(conn, "INSERT INTO table_holds (restaurant_id, zone_id, start_at, end_at, expires_at) "
                          "VALUES (%s, %s, %s, %s, now() + interval '10 minutes') RETURNING id",
                    (restaurant, zone, NOW + timedelta(days=2, hours=3 * h), NOW + timedelta(days=2, hours=3 * h + 2)))
        tenant.holds.append(hold)
        conn.execute("INSERT INTO table_hold_members (hold_id, table_id) VALUES (%s, %s)", (hold, tenant.tables[0]))
    for _ in range(shape.cache_events):
        conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                     "VALUES (%s, %s, 'k', 'miss')", (restaurant, tenant.bookings[0]))
    if shape.flag:
        conn.execute("INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
                     "VALUES (%s, 'allocator.adjacency_mode', 'pairwise')", (restaurant,))
    return tenant


def refused_sqlstate(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> str | None:
    """Run ``statement`` in a savepoint; the SQLSTATE it fails with (None when it succeeds, rolled back)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


# Writes of a row of my tenant ("m_" parameters) that name a row ("r_" parameters) of some tenant: refused
# with 42501 when that row is another tenant's, allowed when it is mine. Every column that names a tenant row.
WINDOW = "tstzrange(now() + interval '900 hours', now() + interval '901 hours')"
CROSS_REFERENCES = {
    "table_inventory.zone_id": "INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity) "
                               "VALUES (%(m_restaurant)s, %(r_zone)s, 'X', 2)",
    "table_inventory.zone_id (update)": "UPDATE table_inventory SET zone_id = %(r_zone)s",
    "table_adjacencies.table_b": "INSERT INTO table_adjacencies (table_a, table_b) "
                                 "VALUES (%(m_table_last)s, %(r_table0)s)",
    "bookings.assigned_zone_id": "INSERT INTO bookings (restaurant_id, assigned_zone_id) "
                                 "VALUES (%(m_restaurant)s, %(r_zone)s)",
    "bookings.assigned_zone_id (update)": "UPDATE bookings SET assigned_zone_id = %(r_zone)s",
    "booking_state_history.booking_id": "INSERT INTO booking_state_history (booking_id, to_status) "
                                        "VALUES (%(r_booking)s, 'cancelled')",
    "allocations.booking_id": "INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, "
                              f"\"window\") VALUES (%(r_booking)s, %(m_restaurant)s, 'merge_group', gen_random_uuid(), "
                              f"{WINDOW})",
    "allocations.booking_id (update)": "UPDATE allocations SET booking_id = %(r_booking)s",
    "allocations.resource_id": "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                               f"VALUES (%(m_restaurant)s, 'table', %(r_table_last)s, {WINDOW})",
    "table_holds.booking_id": "INSERT INTO table_holds (restaurant_id, booking_id, start_at, end_at, expires_at) "
                              "VALUES (%(m_restaurant)s, %(r_booking)s, now(), now() + interval '1 hour', now())",
    "table_holds.booking_id (update)": "UPDATE table_holds SET booking_id = %(r_booking)s",
    "table_holds.zone_id": "INSERT INTO table_holds (restaurant_id, zone_id, start_at, end_at, expires_at) "
                           "VALUES (%(m_restaurant)s, %(r_zone)s, now(), now() + interval '1 hour', now())",
    "table_hold_members.hold_id": "INSERT INTO table_hold_members (hold_id, table_id) "
                                  "VALUES (%(r_hold)s, %(m_table_last)s)",
    "table_hold_members.table_id": "INSERT INTO table_hold_members (hold_id, table_id) "
                                   "VALUES (%(m_hold)s, %(r_table_last)s)",
    "booking_table_assignments.table_id": "INSERT INTO booking_table_assignments (booking_id, table_id) "
                                          "VALUES (%(m_booking)s, %(r_table_last)s)",
    "booking_table_assignments.allocation_id": "INSERT INTO booking_table_assignments (booking_id, table_id, "
                                               "allocation_id) VALUES (%(m_booking)s, %(m_table_last)s, "
                                               "%(r_allocation)s)",
    "booking_table_assignments.allocation_id (update)": "UPDATE booking_table_assignments "
                                                        "SET allocation_id = %(r_allocation)s",
    "booking_assignment_idempotency.merge_group_allocation_id": (
        "INSERT INTO booking_assignment_idempotency (booking_id, idempotency_key, table_set_hash, table_ids, "
        "assignment_window, merge_group_allocation_id) VALUES (%(m_booking)s, 'x', 'h', ARRAY[%(m_table0)s]::uuid[], "
        f"{WINDOW}, %(r_allocation)s)"),
    "booking_assignment_idempotency.merge_group_allocation_id (update)": (
        "UPDATE booking_assignment_idempotency SET merge_group_allocation_id = %(r_allocation)s"),
    "capacity_outbox.booking_id": "INSERT INTO capacity_outbox (event_type, dedupe_key, restaurant_id, booking_id, "
                                  "payload) VALUES ('x', gen_random_uuid()::text, %(m_restaurant)s, %(r_booking)s, '{}')",
    "capacity_outbox.booking_id (update)": "UPDATE capacity_outbox SET booking_id = %(r_booking)s",
    "booking_confirmation_results.booking_id": (
        "INSERT INTO booking_confirmation_results (booking_id, hold_id, restaurant_id, idempotency_key, table_ids, "
        "assignment_window) VALUES (%(r_booking)s, gen_random_uuid(), %(m_restaurant)s, 'x', '{}', "
        f"{WINDOW})"),
    "booking_confirmation_results.booking_id (update)": "UPDATE booking_confirmation_results "
                                                        "SET booking_id = %(r_booking)s, idempotency_key = 'moved'",
    "confirmation_cache_events.booking_id": "INSERT INTO confirmation_cache_events (restaurant_id, booking_id, "
                                            "idempotency_key, outcome) VALUES (%(m_restaurant)s, %(r_booking)s, "
                                            "'x', 'hit')",
}
# Every table whose rows name another tenant row (table_hold_members and booking_table_assignments name two).
REFERENCING_TABLES = {
    "table_inventory", "table_adjacencies", "bookings", "booking_state_history", "allocations", "table_holds",
    "table_hold_members", "booking_table_assignments", "booking_assignment_idempotency", "capacity_outbox",
    "booking_confirmation_results", "confirmation_cache_events",
}
