"""reserve.schema.tenancy: the rows that already name another venue's rows, which 0003b's policies stop
service_role from rewriting. Found by reference, with ids, and nothing else."""

from __future__ import annotations

import re

import pytest

from reserve import sql
from reserve.schema import tenancy
from tests.support import Database
from tests.tenants import CROSS_REFERENCES, Shape, build

REFERENCE_IN_POLICY = re.compile(r"FROM public\.(\w+) \w+\s+WHERE \w+\.id = (\w+)\.(\w+)")


def test_every_reference_the_0003b_policies_check_is_scanned():
    in_policies = {(table, column, target)
                   for target, table, column in REFERENCE_IN_POLICY.findall(sql.read("schema/0003b_tenant_policies_up.sql"))}
    # A row without its own restaurant_id belongs to its booking's: that reference defines the owner.
    owners = {(ref.table, "booking_id", "bookings") for ref in tenancy.REFERENCES_CHECKED_BY_0003B
              if ref.owner == tenancy.BOOKING_OWNER}
    scanned = {(ref.table, ref.column, ref.target) for ref in tenancy.REFERENCES_CHECKED_BY_0003B}
    assert owners <= in_policies and len(owners) == 2
    assert len(scanned) == len(tenancy.REFERENCES_CHECKED_BY_0003B) == 12
    assert scanned == in_policies - owners


@pytest.mark.parametrize("ref", tenancy.REFERENCES_CHECKED_BY_0003B, ids=lambda ref: ref.name)
def test_a_row_naming_another_restaurants_row_is_found_with_its_id(head_db: Database, ref: tenancy.TenantReference):
    shape = Shape(tables=3, bookings=1, holds=1, confirmed=1, cache_events=1, flag=False)
    with head_db.connect() as conn:
        mine, theirs = build(conn, 0, shape), build(conn, 1, shape)
        assert tenancy.find_cross_tenant_rows(conn) == [], "two well-formed venues name only their own rows"
        # Written as the table owner, as a hot-fix or an old bug would have: no policy stops it.
        conn.execute(CROSS_REFERENCES[ref.name], {**mine.params("m"), **theirs.params("r")})

        [found] = tenancy.find_cross_tenant_rows(conn)
        assert (found.reference, found.count, len(found.ids)) == (ref.name, 1, 1)
        named = conn.execute(
            f"SELECT r.restaurant_id FROM public.{ref.table} t JOIN public.{ref.target} r ON r.id = t.{ref.column} "
            f"WHERE {ref.row_id}::text = %s", (found.ids[0],)).fetchall()
        assert set(named) == {(theirs.id,)}  # a booking id as row id also matches their own rows of it


def test_the_count_is_of_every_offending_row_and_the_ids_are_capped(head_db: Database):
    shape = Shape(tables=2, bookings=3, holds=1, confirmed=0, cache_events=0, flag=False)
    with head_db.connect() as conn:
        mine, theirs = build(conn, 0, shape), build(conn, 1, shape)
        conn.execute("UPDATE bookings SET assigned_zone_id = %s WHERE restaurant_id = %s", (theirs.zone, mine.id))
        [found] = tenancy.find_cross_tenant_rows(conn, limit=2)
        assert found.reference == "bookings.assigned_zone_id" and found.count == 3
        assert found.ids == sorted(found.ids) and set(found.ids) < {str(b) for b in mine.bookings}


def test_tables_a_later_revision_creates_are_skipped(baseline_db: Database):
    with baseline_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.confirmation_cache_events')").fetchone()[0] is None
        assert tenancy.find_cross_tenant_rows(conn) == []
