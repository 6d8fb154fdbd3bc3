"""Rows that name another venue's rows: what 0003b's policies refuse from now on, found in existing data.

0003b_tenant_policies makes service_role's WITH CHECK require that every row a
venue writes names only rows of that venue (its booking, zone, allocation,
table). A policy is not a constraint: rows written before 0003b are not
rechecked, and an UPDATE of such a row by service_role is refused with 42501
after the upgrade even when it changes another column. ``reserve preflight``
lists them (ids only) before the step that applies 0003b, so the operator
knows which rows will start failing and can repair them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

REVISION = "0003b_tenant_policies"
BOOKING_OWNER = "(SELECT b.restaurant_id FROM public.bookings b WHERE b.id = t.booking_id)"


@dataclass(frozen=True)
class TenantReference:
    """``table.column`` names a row of ``target``; both must belong to the same restaurant.

    ``owner`` is the row's restaurant (over alias ``t``), ``row_id`` what the
    report shows for it, ``only_when`` limits the rows the reference applies to.
    """

    table: str
    column: str
    target: str
    owner: str = "t.restaurant_id"
    row_id: str = "t.id"
    only_when: str = "true"

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def offenders_sql(self) -> str:
        """The rows naming a ``target`` row of no restaurant or another one, with how many there are."""
        return (
            f"SELECT {self.row_id}::text, count(*) OVER () FROM public.{self.table} t "
            f"WHERE t.{self.column} IS NOT NULL AND ({self.only_when}) AND NOT EXISTS ("
            f"SELECT 1 FROM public.{self.target} r WHERE r.id = t.{self.column} "
            f"AND r.restaurant_id IS NOT DISTINCT FROM {self.owner}) "
            f"ORDER BY 1 LIMIT %s"
        )


# Every reference 0003b_tenant_policies_up.sql adds to a WITH CHECK, in its order, except the booking
# that defines the restaurant of a row without its own restaurant_id (BOOKING_OWNER).
REFERENCES_CHECKED_BY_0003B = (
    TenantReference("table_inventory", "zone_id", "zones"),
    TenantReference("bookings", "assigned_zone_id", "zones"),
    TenantReference("allocations", "booking_id", "bookings"),
    TenantReference("allocations", "resource_id", "table_inventory", only_when="t.resource_type = 'table'"),
    TenantReference("table_holds", "zone_id", "zones"),
    TenantReference("table_holds", "booking_id", "bookings"),
    TenantReference("booking_table_assignments", "table_id", "table_inventory", owner=BOOKING_OWNER),
    TenantReference("booking_table_assignments", "allocation_id", "allocations", owner=BOOKING_OWNER),
    TenantReference("booking_assignment_idempotency", "merge_group_allocation_id", "allocations",
                    owner=BOOKING_OWNER, row_id="t.booking_id"),
    TenantReference("capacity_outbox", "booking_id", "bookings"),
    TenantReference("booking_confirmation_results", "booking_id", "bookings", row_id="t.booking_id"),
    TenantReference("confirmation_cache_events", "booking_id", "bookings"),
)


@dataclass(frozen=True)
class CrossTenantRows:
    reference: str
    count: int
    ids: list[str]  # the first ``limit`` row ids (the booking id where the key also holds a client's key)


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
        "AND NOT attisdropped)", (f"public.{table}", column)).fetchone()[0]


def find_cross_tenant_rows(conn: psycopg.Connection[Any], limit: int = 20) -> list[CrossTenantRows]:
    """Existing rows 0003b's policies would refuse to write, by reference; columns not there yet are skipped.

    Read-only, one anti-join per reference: run it from preflight, never under a migration lock.
    """
    found: list[CrossTenantRows] = []
    for ref in REFERENCES_CHECKED_BY_0003B:
        if not _has_column(conn, ref.table, ref.column) or not _has_column(conn, ref.target, "restaurant_id"):
            continue  # created by a later revision of the step (empty then), or drift that preflight reports
        rows = conn.execute(ref.offenders_sql(), (limit,)).fetchall()
        if rows:
            found.append(CrossTenantRows(ref.name, int(rows[0][1]), [row[0] for row in rows]))
    return found
