"""reserve.capacity.confirm_hold: cache hits without a second call, durable hit/miss records, typed errors,
adjacency modes checked before the call, transaction-local tenant context, and the latency histogram."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import REGISTRY

from reserve.capacity import confirm as client
from reserve.capacity import flags
from reserve.capacity.confirm import confirm_hold
from tests.support import Database, Venue, act_as, scalar, slot

NO_ENV: dict[str, str] = {}


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("reserve_confirm_duration_seconds_count", {"outcome": outcome}) or 0.0


def _errors(kind: str) -> float:
    return REGISTRY.get_sample_value("reserve_confirm_errors_total", {"error": kind}) or 0.0


def _events(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT idempotency_key, outcome FROM confirmation_cache_events ORDER BY id").fetchall()


def _evidence_count(conn: psycopg.Connection) -> int:
    return scalar(conn, "SELECT count(*) FROM booking_confirmation_results")


@pytest.fixture
def conn(head_db: Database):
    """An autocommit connection as the table owner, as a service would hold one."""
    with head_db.connect(autocommit=True) as connection:
        yield connection


@pytest.fixture
def venue(conn) -> Venue:
    venue = Venue(conn, "Venue", tables=4)
    t1, t2, t3, _ = venue.tables
    venue.connect_tables(t1, t2)
    venue.connect_tables(t2, t3)
    return venue


def test_first_call_confirms_and_records_a_miss(conn, venue):
    booking = venue.booking()
    hold = venue.hold(venue.tables[:2], booking=booking, metadata={"policyVersion": "p1"})
    misses = _count("miss")

    result = confirm_hold(conn, hold, booking, "key-1", restaurant_id=venue.id, env=NO_ENV)

    assert not result.from_cache
    assert result.table_ids == tuple(sorted(venue.tables[:2]))
    assert [a.table_id for a in result.assignments] == sorted(venue.tables[:2])
    assert (result.hold_id, result.restaurant_id, result.metadata) == (hold, venue.id, {"policyVersion": "p1"})
    assert _events(conn) == [("key-1", "miss")]
    assert _count("miss") == misses + 1


def test_replay_returns_the_stored_evidence_without_calling_the_function(conn, venue):
    booking = venue.booking()
    hold = venue.hold([venue.tables[0]], booking=booking)
    first = confirm_hold(conn, hold, booking, "key-1", restaurant_id=venue.id, env=NO_ENV)
    outbox = scalar(conn, "SELECT count(*) FROM capacity_outbox")
    hits = _count("hit")

    # The hold was consumed: calling the function again could only raise "Hold not found".
    again = confirm_hold(conn, hold, booking, "key-1", restaurant_id=venue.id, env=NO_ENV)

    assert again.from_cache and again.assignments == ()
    assert (again.table_ids, again.window_start, again.window_end, again.checked_at) == (
        first.table_ids, first.window_start, first.window_end, first.checked_at)
    assert scalar(conn, "SELECT count(*) FROM capacity_outbox") == outbox
    assert _events(conn) == [("key-1", "miss"), ("key-1", "hit")]
    assert _count("hit") == hits + 1
    ratio = scalar(conn, "SELECT count(*) FILTER (WHERE outcome = 'hit')::float / count(*) FROM confirmation_cache_events")
    assert ratio == 0.5


def test_a_known_key_replayed_with_another_hold_is_an_idempotency_conflict(conn, venue):
    booking = venue.booking()
    confirm_hold(conn, venue.hold([venue.tables[0]], booking=booking), booking, "key-1", restaurant_id=venue.id, env=NO_ENV)
    other_hold = venue.hold([venue.tables[1]], slot(30), booking=booking)
    with pytest.raises(client.IdempotencyConflict, match="already confirmed hold"):
        confirm_hold(conn, other_hold, booking, "key-1", restaurant_id=venue.id, env=NO_ENV)
    assert _events(conn) == [("key-1", "miss")]


def _expect(conn, error: type[client.ConfirmError], sqlstate: str | None, call) -> client.ConfirmError:
    """``call`` raises ``error`` with ``sqlstate``, writes no evidence and no cache event, and is counted."""
    evidence, errors, failures = _evidence_count(conn), _count("error"), _errors(error.__name__)
    with pytest.raises(error) as raised:
        call()
    assert type(raised.value) is error
    assert raised.value.sqlstate == sqlstate
    assert _evidence_count(conn) == evidence
    assert conn.execute("SELECT count(*) FROM confirmation_cache_events").fetchone()[0] == len(_events(conn))
    assert _count("error") == errors + 1 and _errors(error.__name__) == failures + 1
    return raised.value


def test_unknown_hold_is_hold_not_found(conn, venue):
    booking = venue.booking()
    _expect(conn, client.HoldNotFound, "P0002",
            lambda: confirm_hold(conn, uuid.uuid4(), booking, "k", restaurant_id=venue.id, env=NO_ENV))
    assert _events(conn) == []


def test_expired_hold_is_hold_expired(conn, venue):
    booking = venue.booking()
    hold = venue.hold([venue.tables[0]], booking=booking, expires_in=timedelta(minutes=-1))
    _expect(conn, client.HoldExpired, "P0001",
            lambda: confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV))


def test_hold_of_another_booking_is_refused(conn, venue):
    mine, theirs = venue.booking(), venue.booking()
    hold = venue.hold([venue.tables[0]], booking=theirs)
    _expect(conn, client.HoldBelongsToAnotherBooking, "P0001",
            lambda: confirm_hold(conn, hold, mine, "k", restaurant_id=venue.id, env=NO_ENV))


def test_a_table_already_allocated_in_the_window_is_overlap_rejected(conn, venue):
    first, second = venue.booking(), venue.booking()
    confirm_hold(conn, venue.hold([venue.tables[0]], booking=first), first, "k1", restaurant_id=venue.id, env=NO_ENV)
    hold = venue.hold([venue.tables[0]], slot(25), booking=second)  # overlaps the first booking's window
    error = _expect(conn, client.OverlapRejected, "P0001",
                    lambda: confirm_hold(conn, hold, second, "k2", restaurant_id=venue.id, env=NO_ENV))
    assert "allocations_no_overlap" in str(error)
    assert scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (hold,)) == 1  # rolled back, hold kept


def test_a_changed_policy_version_is_policy_changed(conn, venue):
    booking = venue.booking()
    hold = venue.hold([venue.tables[0]], booking=booking, metadata={"policyVersion": "p1"})
    _expect(conn, client.PolicyChanged, "P0003",
            lambda: confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, expected_policy_version="p2",
                                 env=NO_ENV))


def test_another_restaurants_hold_is_a_tenant_mismatch(conn, venue):
    other = Venue(conn, "Other")
    booking = venue.booking()
    hold = venue.hold([venue.tables[0]], booking=booking)
    _expect(conn, client.TenantMismatch, "42501",
            lambda: confirm_hold(conn, hold, booking, "k", restaurant_id=other.id, env=NO_ENV))


def test_an_empty_window_is_an_invalid_request(conn, venue):
    booking = venue.booking()
    hold = venue.hold([venue.tables[0]], booking=booking)
    start, end = slot(24)
    _expect(conn, client.InvalidRequest, "22000",
            lambda: confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, window=(end, start), env=NO_ENV))


def test_a_missing_idempotency_key_is_refused_before_anything_runs(conn, venue):
    with pytest.raises(ValueError, match="idempotency key is required"):
        confirm_hold(conn, uuid.uuid4(), uuid.uuid4(), "", restaurant_id=venue.id)


# ---------------------------------------------------------------- adjacency modes


def test_default_connected_mode_accepts_a_chain(conn, venue):
    t1, t2, t3, _ = venue.tables
    booking = venue.booking()
    result = confirm_hold(conn, venue.hold([t1, t2, t3], booking=booking), booking, "k", restaurant_id=venue.id,
                          env=NO_ENV)
    assert len(result.table_ids) == 3


def test_pairwise_venue_rejects_a_chain_before_calling_and_keeps_the_hold(conn, venue):
    t1, t2, t3, _ = venue.tables
    flags.set_override(conn, "pairwise", venue.id)
    booking = venue.booking()
    hold = venue.hold([t1, t2, t3], booking=booking)
    error = _expect(conn, client.AdjacencyRejected, None,
                    lambda: confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV))
    assert "breaks adjacency mode 'pairwise'" in str(error) and "are not adjacent" in str(error)
    assert scalar(conn, "SELECT count(*) FROM table_holds WHERE id = %s", (hold,)) == 1
    assert scalar(conn, "SELECT count(*) FROM allocations") == 0


def test_connected_rejects_two_separate_pairs_that_neighbors_accepts(conn, venue):
    t1, t2, t3, t4 = venue.tables
    conn.execute("DELETE FROM table_adjacencies")
    venue.connect_tables(t1, t2)
    venue.connect_tables(t3, t4)
    booking = venue.booking()
    hold = venue.hold([t1, t2, t3, t4], booking=booking)
    with pytest.raises(client.AdjacencyRejected, match="do not form one connected group"):
        confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV)
    result = confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env={"FEATURE_ALLOCATOR_ADJACENCY_MODE": "neighbors"})
    assert len(result.table_ids) == 4


def test_without_required_adjacency_no_mode_is_checked(conn, venue):
    _, _, t3, t4 = venue.tables  # not adjacent
    flags.set_override(conn, "pairwise", venue.id)
    booking = venue.booking()
    result = confirm_hold(conn, venue.hold([t3, t4], booking=booking), booking, "k", restaurant_id=venue.id,
                          require_adjacency=False, env=NO_ENV)
    assert len(result.table_ids) == 2


def test_an_invalid_mode_in_the_environment_fails_the_call_loudly(conn, venue):
    t1, t2, _, _ = venue.tables
    booking = venue.booking()
    hold = venue.hold([t1, t2], booking=booking)
    with pytest.raises(flags.FlagError, match="FEATURE_ALLOCATOR_ADJACENCY_MODE"):
        confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env={"FEATURE_ALLOCATOR_ADJACENCY_MODE": "diagonal"})
    assert _evidence_count(conn) == 0


# ---------------------------------------------------------------- transactions and tenant context


def test_tenant_context_does_not_outlive_the_call_on_a_pooled_connection(conn, venue):
    booking = venue.booking()
    confirm_hold(conn, venue.hold([venue.tables[0]], booking=booking), booking, "k", restaurant_id=venue.id, env=NO_ENV)
    assert scalar(conn, "SELECT current_setting('app.restaurant_id', true)") in (None, "")


def test_as_service_role_inside_the_callers_transaction_with_its_context_restored(head_db: Database):
    with head_db.connect() as owner:
        venue, other = Venue(owner, "Mine"), Venue(owner, "Theirs")
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]], booking=booking)
        owner.commit()
    with head_db.connect() as conn:
        act_as(conn, "service_role", other.id)  # the caller's transaction had another tenant in context
        result = confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV)
        assert scalar(conn, "SELECT current_setting('app.restaurant_id', true)") == str(other.id)
        replay = confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV)
        assert replay.from_cache and replay.checked_at == result.checked_at
        conn.commit()
    with head_db.connect() as owner:
        assert _events(owner) == [("k", "miss"), ("k", "hit")]


def test_a_rolled_back_caller_transaction_keeps_neither_the_confirmation_nor_its_miss(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        booking = venue.booking()
        hold = venue.hold([venue.tables[0]], booking=booking)
        conn.commit()
        with conn.transaction():  # the caller's transaction: confirm_hold runs in a savepoint inside it
            confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV)
            raise psycopg.Rollback()
        assert _evidence_count(conn) == 0 and _events(conn) == []
        assert confirm_hold(conn, hold, booking, "k", restaurant_id=venue.id, env=NO_ENV).from_cache is False
