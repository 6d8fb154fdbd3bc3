"""The checklist's five manual QA flows, as checks that run against any database at head.

"Manual functional testing: pending, awaiting QA" becomes this: each flow
runs on real data of the target database inside one transaction that is
always rolled back, so nothing it writes survives. Used by the rehearsal
(its tests.txt) and runnable on staging.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

CONFIRM = (
    "SELECT * FROM public.confirm_hold_assignment_tx(p_hold_id => %s, p_booking_id => %s, "
    "p_idempotency_key => %s, p_assigned_by => %s)"
)


@dataclass
class Flow:
    name: str
    passed: bool
    detail: str


class Scratch:
    """A throw-away restaurant with two tables and a far-future window, inside the QA transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.restaurant = self._one("INSERT INTO public.restaurants (name) VALUES ('QA scratch') RETURNING id")
        self.zone = self._one("INSERT INTO public.zones (restaurant_id, name) VALUES (%s, 'QA') RETURNING id",
                              self.restaurant)
        self.tables = [
            self._one("INSERT INTO public.table_inventory (restaurant_id, zone_id, table_number, capacity) "
                      "VALUES (%s, %s, %s, 4) RETURNING id", self.restaurant, self.zone, f"QA-{i}")
            for i in (1, 2)
        ]
        self.start = self._one("SELECT date_trunc('hour', now()) + interval '400 days'")

    def _one(self, sql: str, *params: Any) -> Any:
        return self.conn.execute(sql, params).fetchone()[0]

    def booking(self) -> uuid.UUID:
        return self._one("INSERT INTO public.bookings (restaurant_id, start_at, end_at) "
                         "VALUES (%s, %s, %s + interval '2 hours') RETURNING id", self.restaurant, self.start, self.start)

    def hold(self, booking: uuid.UUID, table: uuid.UUID, offset_hours: int = 0) -> uuid.UUID:
        hold = self._one(
            "INSERT INTO public.table_holds (restaurant_id, zone_id, booking_id, start_at, end_at, expires_at, metadata) "
            "VALUES (%s, %s, %s, %s + make_interval(hours => %s), %s + make_interval(hours => %s + 2), "
            "now() + interval '10 minutes', %s) RETURNING id",
            self.restaurant, self.zone, booking, self.start, offset_hours, self.start, offset_hours,
            Jsonb({"policyVersion": "qa"}),
        )
        self.conn.execute("INSERT INTO public.table_hold_members (hold_id, table_id) VALUES (%s, %s)", (hold, table))
        return hold


def single_table_confirm_writes_its_evidence(s: Scratch) -> str:
    booking = s.booking()
    s.conn.execute(CONFIRM, (s.hold(booking, s.tables[0]), booking, "qa-1", None)).fetchall()
    count = s._one("SELECT count(*) FROM public.booking_confirmation_results WHERE booking_id = %s", booking)
    assert count == 1, f"expected 1 evidence row, found {count}"
    return "1 evidence row"


def overlap_in_same_restaurant_is_rejected_inside_the_call(s: Scratch) -> str:
    first, second = s.booking(), s.booking()
    s.conn.execute(CONFIRM, (s.hold(first, s.tables[0], offset_hours=50), first, "qa-a", None)).fetchall()
    competing = s.hold(second, s.tables[0], offset_hours=51)
    try:
        with s.conn.transaction():
            s.conn.execute(CONFIRM, (competing, second, "qa-b", None)).fetchall()
    except psycopg.errors.RaiseException as exc:
        assert "allocations_no_overlap" in str(exc), str(exc)
        return f"rejected in the call with SQLSTATE {exc.sqlstate}: allocations_no_overlap"
    raise AssertionError("the overlapping confirm was accepted")


def same_resource_in_two_restaurants_is_allowed(s: Scratch) -> str:
    other = s._one("INSERT INTO public.restaurants (name) VALUES ('QA scratch 2') RETURNING id")
    for restaurant in (s.restaurant, other):
        s.conn.execute(
            "INSERT INTO public.allocations (restaurant_id, resource_type, resource_id, \"window\") "
            "VALUES (%s, 'table', %s, tstzrange(%s + interval '10 hours', %s + interval '12 hours'))",
            (restaurant, s.tables[1], s.start, s.start),
        )
    return "two restaurants, one resource id, same window: accepted"


def deferred_batch_passes_through_a_temporary_overlap(s: Scratch) -> str:
    insert = ("INSERT INTO public.allocations (restaurant_id, resource_type, resource_id, \"window\") "
              "VALUES (%s, 'table', %s, tstzrange(%s + make_interval(hours => %s), %s + make_interval(hours => %s))) "
              "RETURNING id")
    with s.conn.transaction():
        s.conn.execute("SET CONSTRAINTS allocations_no_overlap DEFERRED")
        s.conn.execute(insert, (s.restaurant, s.tables[1], s.start, 20, s.start, 22))
        moving = s._one(insert, s.restaurant, s.tables[1], s.start, 21, s.start, 23)
        s.conn.execute("UPDATE public.allocations SET \"window\" = tstzrange(%s + interval '22 hours', "
                       "%s + interval '24 hours') WHERE id = %s", (s.start, s.start, moving))
        s.conn.execute("SET CONSTRAINTS allocations_no_overlap IMMEDIATE")  # checks now
    return "overlap inside a deferred batch resolved before the check"


def evidence_row_is_complete_and_fresh(s: Scratch) -> str:
    booking = s.booking()
    actor = uuid.uuid4()
    hold = s.hold(booking, s.tables[1], offset_hours=30)
    s.conn.execute(CONFIRM, (hold, booking, "qa-5", actor)).fetchall()
    row = s.conn.execute(
        "SELECT hold_id, restaurant_id, idempotency_key, table_ids, assignment_window IS NOT NULL, actor_id, "
        "metadata, checked_at = now() FROM public.booking_confirmation_results WHERE booking_id = %s", (booking,),
    ).fetchone()
    assert row == (hold, s.restaurant, "qa-5", [s.tables[1]], True, actor, {"policyVersion": "qa"}, True), row
    return "booking, hold, restaurant, key, tables, window, actor, metadata and checked_at as written"


FLOWS: list[Callable[[Scratch], str]] = [
    single_table_confirm_writes_its_evidence,
    overlap_in_same_restaurant_is_rejected_inside_the_call,
    same_resource_in_two_restaurants_is_allowed,
    deferred_batch_passes_through_a_temporary_overlap,
    evidence_row_is_complete_and_fresh,
]


def run_flows(conn: psycopg.Connection[Any]) -> list[Flow]:
    """Run every flow in its own savepoint of one transaction, then roll everything back."""
    results = []
    conn.autocommit = False
    try:
        scratch = Scratch(conn)
        for flow in FLOWS:
            name = flow.__name__.replace("_", " ")
            try:
                with conn.transaction():
                    detail = flow(scratch)
                results.append(Flow(name, True, detail))
            except (AssertionError, psycopg.Error) as exc:
                results.append(Flow(name, False, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    finally:
        conn.rollback()
    return results


def render(results: list[Flow]) -> str:
    lines = [f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.detail}" for r in results]
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return "\n".join(lines) + "\n"
