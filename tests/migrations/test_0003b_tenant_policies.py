"""Revision 0003b_tenant_policies: the catalogs of its neighbours on either side, the two gaps it closes
(and its downgrade reopens, exactly), legitimate calls unaffected, and a wait for a lock bounded by
lock_timeout that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.util import CommandError

from reserve.rollout import alembic_runner
from reserve.schema import catalog, expectations
from tests.support import Database, Venue, act_as, assign_tables, confirm, scalar, slot
from tests.tenants import CROSS_REFERENCES, Shape, build, refused_sqlstate

BEFORE, THIS = "0003a_operations", "0003b_tenant_policies"
# The tables whose policies the revision changes.
TABLES = {"table_inventory", "bookings", "allocations", "table_holds", "booking_table_assignments",
          "booking_assignment_idempotency", "capacity_outbox", "feature_flag_overrides",
          "booking_confirmation_results", "confirmation_cache_events"}
# The writes a venue's service_role could do before this revision (the other CROSS_REFERENCES were refused
# by the baseline already): its rows naming another venue's rows, and writes to the global flag overrides.
GAPS_CLOSED = {
    "table_inventory.zone_id", "table_inventory.zone_id (update)", "bookings.assigned_zone_id",
    "bookings.assigned_zone_id (update)", "allocations.booking_id", "allocations.booking_id (update)",
    "allocations.resource_id", "table_holds.booking_id", "table_holds.booking_id (update)", "table_holds.zone_id",
    "booking_table_assignments.allocation_id", "booking_table_assignments.allocation_id (update)",
    "booking_assignment_idempotency.merge_group_allocation_id",
    "booking_assignment_idempotency.merge_group_allocation_id (update)", "capacity_outbox.booking_id",
    "capacity_outbox.booking_id (update)", "booking_confirmation_results.booking_id",
    "booking_confirmation_results.booking_id (update)", "confirmation_cache_events.booking_id",
    "delete a global flag", "take over a global flag",
}
GLOBAL_FLAG_WRITES = {
    "delete a global flag": "DELETE FROM feature_flag_overrides WHERE restaurant_id IS NULL",
    "take over a global flag": "UPDATE feature_flag_overrides SET restaurant_id = %(m_restaurant)s "
                               "WHERE restaurant_id IS NULL",
}


def _facts(snap: catalog.Snapshot) -> set[tuple[str, str]]:
    return {(section, line) for section, lines in snap.items() for line in lines}


def test_the_upgrade_changes_only_the_policies_of_its_tables():
    """Read from the shipped catalogs (test_expectations holds them to a fresh migration of each revision; the
    stairway holds the downgrade to the catalog below)."""
    below, at = expectations.expected(BEFORE), expectations.expected(THIS)
    changed = _facts(at) ^ _facts(below)
    assert {section for section, _ in changed} == {"policies"}
    assert {line.split(" ")[0].removeprefix("public.") for _, line in changed} == TABLES


def _open_gaps(db: Database) -> set[str]:
    """Which writes across tenants a venue's service_role gets away with (every one rolled back)."""
    shape = Shape(tables=3, bookings=1, holds=1, confirmed=1, cache_events=1, flag=False)
    with db.connect(autocommit=True) as conn, conn.transaction(force_rollback=True):
        mine, theirs = build(conn, 0, shape), build(conn, 1, shape)
        conn.execute("INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('capacity.global', 'off')")
        act_as(conn, "service_role", mine.id)
        params: dict[str, Any] = {**mine.params("m"), **theirs.params("r")}
        opened = {case for case, statement in CROSS_REFERENCES.items()
                  if refused_sqlstate(conn, statement, params) is None}
        for case, statement in GLOBAL_FLAG_WRITES.items():
            with conn.transaction(force_rollback=True):
                if conn.execute(statement, params).rowcount:
                    opened.add(case)
    return opened


def test_a_venue_can_no_longer_write_global_flags_or_name_another_venues_rows_and_downgrade_restores_that(
        baseline_db: Database):
    baseline_db.upgrade(BEFORE)
    assert _open_gaps(baseline_db) == GAPS_CLOSED
    baseline_db.upgrade(THIS)
    assert _open_gaps(baseline_db) == set()
    baseline_db.downgrade(BEFORE)
    assert _open_gaps(baseline_db) == GAPS_CLOSED


def test_legitimate_calls_of_service_role_still_work(baseline_db: Database):
    """The definer functions run as the table owner (no FORCE ROW LEVEL SECURITY), and a venue's own writes
    name only its own rows: assign, confirm (v12, with evidence) and the flags work as before."""
    baseline_db.upgrade(THIS)
    with baseline_db.connect() as conn:
        venue, other = Venue(conn, "Mine"), Venue(conn, "Theirs")
        venue.connect_tables(venue.tables[0], venue.tables[1])
        assigned, held = venue.booking(slot(24)), venue.booking(slot(48))
        hold = venue.hold(venue.tables[:2], slot(48), booking=held)
        other.hold(other.tables[:1], slot(24))
        owners = {row[0] for row in conn.execute(
            "SELECT relowner FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relrowsecurity "
            "UNION SELECT proowner FROM pg_proc WHERE prosecdef AND pronamespace = 'public'::regnamespace")}
        assert len(owners) == 1
        assert not scalar(conn, "SELECT bool_or(relforcerowsecurity) FROM pg_class "
                                "WHERE relnamespace = 'public'::regnamespace")
        conn.commit()

        act_as(conn, "service_role", venue.id)
        assert [row[0] for row in assign_tables(conn, assigned, venue.tables[2:], key="a")] == venue.tables[2:]
        assert len(confirm(conn, hold, held, key="c", adjacency=True, status="confirmed")) == 2
        conn.execute("INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) "
                     "VALUES (%s, 'allocator.adjacency_mode', 'pairwise')", (venue.id,))
        conn.execute("UPDATE feature_flag_overrides SET flag_value = 'neighbors'")
        conn.execute("UPDATE bookings SET assigned_zone_id = %s WHERE id = %s", (venue.zone, assigned))
        conn.commit()
        assert scalar(conn, "SELECT count(*) FROM booking_confirmation_results WHERE booking_id = %s", (held,)) == 1
        assert scalar(conn, "SELECT status::text FROM bookings WHERE id = %s", (held,)) == "confirmed"
        assert scalar(conn, "SELECT count(*) FROM allocations") == 4  # 1 + merge group and 2 tables
        conn.commit()


def test_a_lock_wait_is_bounded_retried_and_then_changes_nothing(baseline_db: Database):
    baseline_db.upgrade(BEFORE)
    below = baseline_db.snapshot()
    with baseline_db.connect() as reader:
        reader.execute("SELECT count(*) FROM table_inventory")  # ACCESS SHARE on the last table locked
        with pytest.raises(CommandError, match="could not lock .* after 2 attempts of 200ms"):
            baseline_db.upgrade(THIS, x=["swap_lock_timeout=200ms", "swap_lock_attempts=2", "swap_lock_pause=0.1"])
        reader.rollback()
    assert baseline_db.current() == BEFORE and baseline_db.snapshot() == below
    baseline_db.upgrade(THIS)
    assert baseline_db.current() == THIS


def test_offline_script_changes_policies_only_in_one_transaction():
    script = alembic_runner.offline_sql("upgrade", f"{BEFORE}:{THIS}")
    begin, commit = script.index("BEGIN;"), script.index("COMMIT;")
    assert script.count("BEGIN;") == script.count("COMMIT;") == 1 and begin < script.index(THIS) < commit
    code = "\n".join(line for line in script[begin + len("BEGIN;"):commit].splitlines()
                     if not line.lstrip().startswith("--"))
    kinds = {" ".join(s.split()[:2]) for s in code.split(";") if s.strip()}
    assert kinds == {"SET LOCAL", "LOCK TABLE", "ALTER POLICY", "DROP POLICY", "CREATE POLICY",
                     "UPDATE alembic_version"}, kinds
