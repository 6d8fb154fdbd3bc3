"""Revision 0003a_operations: the adjacency-mode check, confirmation_cache_events and the retention function;
a downgrade that removes exactly those, and refusals that change nothing."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from alembic.util import CommandError

from reserve import db
from reserve.rollout import alembic_runner
from tests.ops_support import with_aged_evidence
from tests.support import Database, Venue, act_as, confirm, scalar, sqlstate_of

BEFORE, THIS = "0003_confirm_v12", "0003a_operations"
OBJECTS = ("feature_flag_overrides_adjacency_mode_check", "confirmation_cache_events",
           "purge_booking_confirmation_results")
PURGE = "SELECT * FROM purge_booking_confirmation_results(%s, %s, %s)"


def test_upgrade_adds_its_objects_and_touches_nothing_else(empty_db: Database):
    """(Its order in the chain is test_chain's; that down and up again give identical catalogs, the stairway's.)"""
    empty_db.upgrade(BEFORE)
    below = empty_db.snapshot()
    empty_db.upgrade(THIS)
    at = empty_db.snapshot()
    added = {(section, line) for section, lines in at.items() for line in lines} - {
        (section, line) for section, lines in below.items() for line in lines}
    removed = {(section, line) for section, lines in below.items() for line in lines} - {
        (section, line) for section, lines in at.items() for line in lines}
    assert added and not removed
    assert all(any(name in line for name in OBJECTS) for _, line in added), sorted(added)
    assert {name for name in OBJECTS if any(name in line for _, line in added)} == set(OBJECTS)


def _bad_flag_rows(db: Database) -> list[str]:
    with db.connect() as conn:
        venue = Venue(conn)
        ids = [conn.execute(
            "INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) VALUES (%s, "
            "'allocator.adjacency_mode', %s) RETURNING id::text", (restaurant, value)).fetchone()[0]
            for restaurant, value in ((venue.id, "diagonal"), (None, "Connected"))]
        conn.execute("INSERT INTO feature_flag_overrides (flag_key, flag_value) VALUES ('other.flag', 'whatever')")
    return ids


def test_upgrade_refuses_invalid_adjacency_modes_listing_their_ids_and_changes_nothing(empty_db: Database):
    empty_db.upgrade(BEFORE)
    ids = _bad_flag_rows(empty_db)
    before = empty_db.snapshot()
    with pytest.raises(CommandError) as refused:
        empty_db.upgrade(THIS)
    message = str(refused.value)
    assert "feature_flag_overrides_adjacency_mode_check" in message and "allowed: connected, pairwise, neighbors" in message
    assert all(i in message for i in ids) and "'diagonal'" in message and "'Connected'" in message
    assert empty_db.current() == BEFORE
    assert empty_db.snapshot() == before


def test_offline_script_refuses_invalid_adjacency_modes_too(empty_db: Database):
    empty_db.upgrade(BEFORE)
    ids = _bad_flag_rows(empty_db)
    script = alembic_runner.offline_sql("upgrade", f"{BEFORE}:{THIS}")
    assert script.index("DO $check$") < script.index("ADD CONSTRAINT feature_flag_overrides_adjacency_mode_check")
    url = empty_db.url
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", "-"],
        input=script, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": url.password or ""},
    )
    assert result.returncode != 0
    assert all(i in result.stderr for i in ids), db.scrub(result.stderr, url)
    assert empty_db.current() == BEFORE


def test_downgrade_archives_cache_events_and_upgrade_brings_the_same_rows_back(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        for outcome in ("miss", "hit", "hit"):
            conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                         "VALUES (%s, %s, 'k', %s)", (venue.id, booking, outcome))
        rows = conn.execute("SELECT * FROM confirmation_cache_events ORDER BY id").fetchall()
    head_db.downgrade(BEFORE)
    with head_db.connect() as conn:
        assert scalar(conn, "SELECT to_regclass('public.confirmation_cache_events')") is None
        assert conn.execute("SELECT * FROM reserve_archive.confirmation_cache_events ORDER BY id").fetchall() == rows
    head_db.upgrade("head")
    with head_db.connect() as conn:
        assert conn.execute("SELECT * FROM confirmation_cache_events ORDER BY id").fetchall() == rows
        assert scalar(conn, "SELECT to_regnamespace('reserve_archive')") is None


# ---------------------------------------------------------------- confirmation_cache_events: tenant isolation


@dataclass
class Tenant:
    id: uuid.UUID
    spare_booking: uuid.UUID


@pytest.fixture
def two_venues_with_events(head_db: Database) -> list[Tenant]:
    """Restaurants A and B, each with one cache event and a booking without any."""
    tenants = []
    with head_db.connect() as conn:
        for name in ("A", "B"):
            venue = Venue(conn, name)
            conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                         "VALUES (%s, %s, 'k', 'miss')", (venue.id, venue.booking()))
            tenants.append(Tenant(venue.id, venue.booking()))
        conn.commit()
    return tenants


def test_service_role_reads_and_writes_only_its_restaurants_cache_events(head_db: Database, two_venues_with_events):
    mine, theirs = two_venues_with_events
    with head_db.connect() as conn:
        act_as(conn, "service_role", mine.id)
        assert conn.execute("SELECT restaurant_id FROM confirmation_cache_events").fetchall() == [(mine.id,)]
        conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                     "VALUES (%s, %s, 'k2', 'hit')", (mine.id, mine.spare_booking))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                         "VALUES (%s, %s, 'k', 'hit')", (theirs.id, theirs.spare_booking))
        conn.rollback()
        act_as(conn, "service_role", mine.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # append-only: no UPDATE or DELETE grant
            conn.execute("DELETE FROM confirmation_cache_events")
        conn.rollback()


def test_service_role_without_a_context_is_refused(head_db: Database, two_venues_with_events):
    with head_db.connect() as conn:
        act_as(conn, "service_role")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT count(*) FROM confirmation_cache_events").fetchone()
        assert sqlstate_of(refused) == "42501" and "Restaurant context is required" in str(refused.value)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_anon_and_authenticated_get_nothing(head_db: Database, two_venues_with_events, role: str):
    with head_db.connect() as conn:
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            assert not scalar(conn, "SELECT has_table_privilege(%s, 'public.confirmation_cache_events', %s)",
                              (role, privilege))
        assert not scalar(conn, "SELECT has_function_privilege(%s, "
                          "'public.purge_booking_confirmation_results(timestamptz, integer, boolean)', 'EXECUTE')", (role,))


def test_an_unknown_outcome_is_refused(head_db: Database, two_venues_with_events):
    mine, _ = two_venues_with_events
    with head_db.connect() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
                     "VALUES (%s, %s, 'k', 'maybe')", (mine.id, mine.spare_booking))


# ---------------------------------------------------------------- purge_booking_confirmation_results


def test_purge_function_is_security_definer_with_a_pinned_search_path_for_the_maintenance_role_only(
        head_db: Database):
    with head_db.connect() as conn:
        secdef, config = conn.execute(
            "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'purge_booking_confirmation_results'").fetchone()
        assert secdef and config == ["search_path=pg_catalog, pg_temp"]
        conn.execute("CREATE ROLE reserve_test_nobody NOLOGIN")
        signature = "public.purge_booking_confirmation_results(timestamptz, integer, boolean)"
        # 0003a granted it to service_role; 0003c_maintenance_role moved it to the platform's maintenance role.
        assert scalar(conn, "SELECT has_function_privilege('reserve_maintenance', %s, 'EXECUTE')", (signature,))
        assert not scalar(conn, "SELECT has_function_privilege('service_role', %s, 'EXECUTE')", (signature,))
        assert not scalar(conn, "SELECT has_function_privilege('reserve_test_nobody', %s, 'EXECUTE')", (signature,))
        conn.rollback()


@pytest.fixture
def aged(head_db: Database) -> Database:
    """Two venues, each with 3 evidence rows 40 days old and 2 rows 10 minutes old (and as many cache events)."""
    return with_aged_evidence(head_db)


def _counts(conn: psycopg.Connection) -> tuple[int, int]:
    return (scalar(conn, "SELECT count(*) FROM booking_confirmation_results"),
            scalar(conn, "SELECT count(*) FROM confirmation_cache_events"))


def test_purge_deletes_old_rows_of_every_venue_in_batches_and_keeps_recent_ones(aged: Database):
    with aged.connect(autocommit=True) as conn:
        cutoff = scalar(conn, "SELECT now() - interval '30 days'")
        calls = [conn.execute(PURGE, (cutoff, 4, False)).fetchone() for _ in range(2)]
        assert calls == [(4, 4, True), (2, 2, False)]
        assert _counts(conn) == (4, 4)
        assert scalar(conn, "SELECT min(checked_at) > now() - interval '1 day' FROM booking_confirmation_results")
        assert conn.execute(PURGE, (cutoff, 4, False)).fetchone() == (0, 0, False)  # idempotent


def test_purge_dry_run_counts_everything_and_deletes_nothing(aged: Database):
    with aged.connect(autocommit=True) as conn:
        assert conn.execute(PURGE, (scalar(conn, "SELECT now() - interval '30 days'"), 1, True)).fetchone() == (6, 6, False)
        assert _counts(conn) == (10, 10)


@pytest.mark.parametrize("batch_size", [0, -5, None])
def test_purge_refuses_a_non_positive_batch_size_with_22023(aged: Database, batch_size):
    with aged.connect() as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch size must be a positive number"):
            conn.execute(PURGE, (scalar(conn, "SELECT now() - interval '30 days'"), batch_size, False))
        conn.rollback()
        assert _counts(conn) == (10, 10)


@pytest.mark.parametrize("cutoff", ["now() - interval '2 hours'", "now() + interval '1 day'", "NULL"])
def test_purge_refuses_a_cutoff_less_than_a_day_old_or_missing_with_22023(aged: Database, cutoff: str):
    with aged.connect() as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(f"SELECT * FROM purge_booking_confirmation_results({cutoff}, 100, false)")
        conn.rollback()
        assert _counts(conn) == (10, 10)


def test_purge_skips_rows_a_confirmation_has_locked_instead_of_waiting(aged: Database):
    with aged.connect() as locker, aged.connect(autocommit=True) as conn:
        locked = locker.execute("SELECT booking_id FROM booking_confirmation_results ORDER BY checked_at LIMIT 1 "
                                "FOR UPDATE").fetchone()[0]
        conn.execute("SET lock_timeout = '2s'")
        cutoff = scalar(conn, "SELECT now() - interval '30 days'")
        assert conn.execute(PURGE, (cutoff, 100, False)).fetchone() == (5, 6, True)
        assert scalar(conn, "SELECT count(*) FROM booking_confirmation_results WHERE booking_id = %s", (locked,)) == 1
        locker.rollback()
        assert conn.execute(PURGE, (cutoff, 100, False)).fetchone() == (1, 0, False)


def test_the_maintenance_role_runs_retention_for_the_whole_platform(aged: Database):
    with aged.connect() as conn:
        act_as(conn, "reserve_maintenance")
        assert conn.execute(PURGE, (scalar(conn, "SELECT now() - interval '30 days'"), 100, False)).fetchone() == (6, 6, False)
        conn.commit()


def test_purge_runs_while_confirmations_continue(aged: Database):
    """A purge in progress does not block a new confirmation (different rows, no table lock)."""
    with aged.connect() as purger:
        purger.execute(PURGE, (scalar(purger, "SELECT now() - interval '30 days'"), 100, False)).fetchone()
        done = threading.Event()

        def confirm_meanwhile() -> None:
            with aged.connect() as conn:
                conn.execute("SET lock_timeout = '2s'")
                venue = Venue(conn, "C")
                booking = venue.booking()
                confirm(conn, venue.hold([venue.tables[0]], booking=booking), booking, key="during-purge")
                conn.commit()
            done.set()

        thread = threading.Thread(target=confirm_meanwhile)
        thread.start()
        thread.join(timeout=10)
        assert done.is_set()
        purger.commit()


def test_the_check_and_its_pre_check_allow_exactly_the_modes_the_client_knows():
    from reserve import sql
    from reserve.capacity.adjacency import MODES

    for script in ("schema/0003a_operations_up.sql", "schema/0003a_operations_invalid_flags.sql"):
        allowed = re.search(r"flag_value (?:NOT )?IN \(([^)]*)\)", sql.read(script)).group(1)
        assert [mode.strip(" '") for mode in allowed.split(",")] == list(MODES), script
