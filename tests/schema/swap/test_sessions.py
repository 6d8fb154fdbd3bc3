"""The online swap under the session settings and transaction kinds production databases have (issue 30): a
database whose default isolation is REPEATABLE READ, an owner subject to FORCE ROW LEVEL SECURITY, a tail that
grows while the exchange waits, an application that locks a booking before deleting it, prepared transactions,
a replayer that must yield, a subscription. Each test drives the library's phases from several connections."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
import pytest
from alembic.util import CommandError

from reserve.operations import swap_window
from reserve.report import FAIL
from reserve.rollout import preflight
from reserve.schema import locks
from reserve.schema.guards import NEW_GUARD
from reserve.schema.options import SwapOptions
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import changelog, exchange, online, refusals
from reserve.schema.swap import state as swap_state
from tests import swapping
from tests.support import Database, slot, wait_until


def _backfilled(db_: Database, allocations: int = 1) -> tuple[Any, list[Any]]:
    """Two venues and ``allocations`` rows on the first venue's first table, the shadow built and backfilled."""
    a, _ = swapping.two_venues(db_)
    with db_.connect() as conn:
        ids = [swapping.insert(conn, a.id, a.tables[0], slot(3 * n)) for n in range(allocations)]
        conn.commit()
    with db_.connect(autocommit=True) as conn:
        swapping.build(conn)
        swapping.backfill_rest(conn)
    return a, ids


def _exchange_waiting_behind_a_writer(db_: Database, during_wait, options: SwapOptions = swapping.OPTIONS) -> Any:
    """The exchange started while an application write holds allocations; ``during_wait(conn)`` runs (and commits)
    while the exchange waits for its lock; then the writer ends. What the exchange returned."""
    with db_.connect() as app, db_.connect(autocommit=True) as ops, db_.connect(autocommit=True) as other:
        app.execute("LOCK TABLE allocations IN ROW EXCLUSIVE MODE")  # as an allocation write in flight does
        found = swap_state.read(ops)
        exchanging = swapping.InThread(lambda: exchange.forward(swapping.session(ops), found, NEW_GUARD, options,
                                                                action=swapping.ACTION))
        wait_until(lambda: swapping.waiting_for_a_lock(other, ops.info.backend_pid), "the exchange to wait")
        during_wait(other)
        app.commit()
        return exchanging.result(timeout_s=60)


# ---------------------------------------------------------------- isolation (item 1)

@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
def test_a_write_committed_while_the_exchange_waits_is_live_after_it_whatever_the_default_isolation(
        pre_swap_db: Database, isolation: str):
    with pre_swap_db.connect(autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {pre_swap_db.name} SET default_transaction_isolation = '{isolation}'")
    venue, _ = _backfilled(pre_swap_db)
    written = []

    def write(conn: psycopg.Connection[Any]) -> None:
        written.append(swapping.insert(conn, venue.id, venue.tables[1], slot(5)))

    _exchange_waiting_behind_a_writer(pre_swap_db, write)
    with pre_swap_db.connect(autocommit=True) as conn:
        assert written[0] in {row[0] for row in swapping.rows(conn, swap_state.LIVE)}
        swapping.open_window(conn)
        swapping.replay(conn)  # a round of the window's replay keeps it in the previous table too
        assert written[0] in {row[0] for row in swapping.rows(conn, swap_state.SHADOW)}
        assert swapping.differences(conn) == (set(), set())


def test_the_replay_refuses_a_snapshot_older_than_its_statements(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="needs READ COMMITTED"):
            conn.execute("SELECT reserve_swap.replay()")


def test_the_swaps_sessions_run_read_committed_with_row_security_off_whatever_the_defaults(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {pre_swap_db.name} SET default_transaction_isolation = 'serializable'")
        conn.execute(f"ALTER DATABASE {pre_swap_db.name} SET row_security = on")
    with pre_swap_db.connect(autocommit=True) as conn:
        session = PsycopgSession(conn)
        with session.transaction():
            assert session.execute("SELECT current_setting('transaction_isolation'), current_setting('row_security'), "
                                   "current_setting('session_replication_role')").fetchone() == \
                ("read committed", "off", "origin")


# ---------------------------------------------------------------- row-level security (item 2)

@pytest.fixture
def forced_rls_owner(pre_swap_db: Database):
    """allocations owned by a role that is neither superuser nor BYPASSRLS, with FORCE ROW LEVEL SECURITY."""
    with pre_swap_db.connect(autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE swap_deployer NOSUPERUSER NOBYPASSRLS; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute("ALTER TABLE allocations OWNER TO swap_deployer")
        conn.execute("ALTER TABLE allocations FORCE ROW LEVEL SECURITY")
    return pre_swap_db


def test_an_owner_subject_to_forced_rls_is_refused_before_anything_is_built(forced_rls_owner: Database):
    venue, _ = swapping.two_venues(forced_rls_owner)
    with forced_rls_owner.connect() as conn:
        swapping.insert(conn, venue.id, venue.tables[0], slot(2))
        conn.commit()
    with forced_rls_owner.connect(autocommit=True) as conn:
        conn.execute("SET ROLE swap_deployer")
        with pytest.raises(CommandError, match="role swap_deployer reading public.allocations: the table has FORCE "
                                               "ROW LEVEL SECURITY .* neither a superuser nor BYPASSRLS"):
            online.build(swapping.session(conn), "upgrade", NEW_GUARD, action=swapping.ACTION)
        assert not swap_state.exists(conn)
        # A read it would filter raises in the swap's sessions (row_security off) instead of returning a part.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("SELECT count(*) FROM public.allocations")


def test_with_bypassrls_the_same_owner_is_not_refused(forced_rls_owner: Database):
    with forced_rls_owner.connect(autocommit=True) as conn:
        conn.execute("ALTER ROLE swap_deployer BYPASSRLS")
        try:
            conn.execute("SET ROLE swap_deployer")
            assert not any("swap_deployer" in line for line in refusals.find(PsycopgSession(conn)))
        finally:
            conn.execute("RESET ROLE")
            conn.execute("ALTER ROLE swap_deployer NOBYPASSRLS")


# ---------------------------------------------------------------- the tail under the lock (item 3)

def test_a_tail_that_grew_while_the_exchange_waited_is_caught_up_before_the_lock_not_under_it(
        pre_swap_db: Database, caplog: pytest.LogCaptureFixture):
    venue, ids = _backfilled(pre_swap_db, allocations=120)
    options = SwapOptions(method="online", snapshot_wait_s=5.0, tail_rows=20)

    def bulk_update(conn: psycopg.Connection[Any]) -> None:
        conn.execute("UPDATE allocations SET is_maintenance = NOT is_maintenance")  # 120 log rows at once

    with caplog.at_level(logging.INFO, logger="reserve.schema.swap"):
        _exchange_waiting_behind_a_writer(pre_swap_db, bulk_update, options)
    released = [r.getMessage() for r in caplog.records if "log rows were waiting once the locks were granted" in
                r.getMessage()]
    assert released and "120 log rows" in released[0]
    replayed = [r.getMessage() for r in caplog.records if "log rows replayed, then catalog work" in r.getMessage()]
    assert len(replayed) == 1
    under_lock = int(replayed[0].split("(")[1].split(" log rows")[0])
    assert under_lock <= options.tail_rows
    with pre_swap_db.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FILTER (WHERE is_maintenance) FROM public.allocations").fetchone()[0] == 120


# ---------------------------------------------------------------- the replayer and the application (item 4)

def test_the_replayer_waits_behind_an_application_that_locked_a_booking_and_never_deadlocks_it(head_db: Database):
    venue, _ = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        booking = conn.execute("INSERT INTO bookings (restaurant_id, status, start_at, end_at) VALUES "
                               "(%s, 'pending', %s, %s) RETURNING id", (venue.id, *slot(24))).fetchone()[0]
        allocation = swapping.insert(conn, venue.id, venue.tables[0], slot(24), booking=booking)
        conn.commit()
    with head_db.connect(autocommit=True) as conn:
        swapping.replay(conn)  # the previous table has it, with its ON DELETE CASCADE key to bookings
    with head_db.connect() as conn:
        conn.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(30), allocation))
        conn.commit()  # in the log
    with head_db.connect() as app, head_db.connect(autocommit=True) as replayer, \
            head_db.connect(autocommit=True) as look:
        app.execute("SELECT 1 FROM bookings WHERE id = %s FOR UPDATE", (booking,))
        replaying = swapping.InThread(lambda: swapping.replay(replayer))
        wait_until(lambda: swapping.waiting_for_a_lock(look, replayer.info.backend_pid), "the replay to wait")
        app.execute("DELETE FROM bookings WHERE id = %s", (booking,))  # cascades into both tables
        app.commit()
        replaying.result()
        assert allocation not in {row[0] for row in swapping.rows(look, swap_state.SHADOW)}
        assert swapping.differences(look) == (set(), set())


# ---------------------------------------------------------------- conflicts cost no subtransaction per row (item 6)

def _next_xid(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])


def test_a_batch_replayed_with_one_recorded_conflict_uses_a_few_transaction_ids(head_db: Database):
    venue, other = swapping.two_venues(head_db)
    resource = venue.tables[0]
    with head_db.connect() as conn:
        # The documented conflict: one table booked in two restaurants at once (the old guard forbids it).
        swapping.insert(conn, venue.id, resource, slot(2))
        clash = swapping.insert(conn, other.id, resource, slot(2))
        for n in range(500):
            swapping.insert(conn, venue.id, venue.tables[1], slot(3 * n + 10, 1))
        conn.commit()
    with head_db.connect(autocommit=True) as conn:
        before = _next_xid(conn)
        changelog.replay(PsycopgSession(conn), 1000)
        used = _next_xid(conn) - before
        assert swapping.conflict_ids(conn) == {clash}
        assert len(swapping.rows(conn, swap_state.SHADOW)) == 501
        assert used <= 5, f"{used} transaction ids for one batch"
        before = _next_xid(conn)
        changelog.replay(PsycopgSession(conn), 1000)  # the conflict tried again: still one, still cheap
        assert swapping.conflict_ids(conn) == {clash} and _next_xid(conn) - before <= 5


# ---------------------------------------------------------------- prepared transactions (items 5, 10)

@pytest.fixture
def prepared(pre_swap_db: Database):
    """``prepare(gid, sql)``: a transaction that ran ``sql`` and was prepared; rolled back at the end."""
    gids: list[str] = []

    def prepare(gid: str, sql: str) -> None:
        with pre_swap_db.connect() as conn:
            conn.execute(sql)
            conn.execute(f"PREPARE TRANSACTION '{gid}'")
        gids.append(gid)
    yield prepare
    with pre_swap_db.connect(autocommit=True) as conn:
        for gid in gids:
            if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
                conn.execute(f"ROLLBACK PREPARED '{gid}'")


def test_a_prepared_transaction_older_than_the_fill_does_not_make_fresh_reads_look_old(pre_swap_db: Database,
                                                                                        prepared):
    a, _ = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE public.side_ledger (n int)")
        swapping.insert(conn, a.id, a.tables[0], slot(3))
        swapping.build(conn)
    prepared("tm-42", "INSERT INTO public.side_ledger VALUES (1)")  # holds back every snapshot's xmin
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.backfill_rest(conn)
    stop = []

    def booking_page_reads() -> int:  # short REPEATABLE READ reads (80 ms), one after another, all the while
        with pre_swap_db.connect(autocommit=True) as reader:
            n = 0
            while not stop:
                with reader.transaction():
                    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    reader.execute("SELECT count(*) FROM public.restaurants")
                    time.sleep(0.08)
                n += 1
            return n

    reads = [swapping.InThread(booking_page_reads)]
    time.sleep(0.04)
    reads.append(swapping.InThread(booking_page_reads))  # staggered: one of them is always reading
    try:
        time.sleep(0.3)
        with pre_swap_db.connect(autocommit=True) as conn:
            options = SwapOptions(method="online", snapshot_wait_s=3.0)
            exchange.wait_for_old_snapshots(swapping.session(conn), options, action=swapping.ACTION)
    finally:
        stop.append(True)
    assert all(read.result() > 3 for read in reads)


def test_a_prepared_transaction_holding_allocations_is_named_as_the_holder(pre_swap_db: Database, prepared):
    prepared("tm-7", "LOCK TABLE allocations IN ROW EXCLUSIVE MODE")
    with pre_swap_db.connect(autocommit=True) as conn:
        found = locks.holders(conn, {"public.allocations": "ACCESS EXCLUSIVE"})
        assert [(h.pid, h.prepared, h.mode) for h in found] == [(None, "tm-7", "ROW EXCLUSIVE")]
        assert "prepared transaction 'tm-7' holds ROW EXCLUSIVE on public.allocations" in found[0].describe()
    report = preflight.preflight(pre_swap_db.url, target="head")
    holders = [check for check in report.checks if check.name == "lock holders"][0]
    assert holders.status == FAIL and "prepared transaction 'tm-7'" in holders.detail


# ---------------------------------------------------------------- the replayer yields (items 7, 9)

def test_a_running_replay_is_cancelled_by_the_mover_not_waited_for(head_db: Database):
    venue, _ = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        conn.execute("INSERT INTO reserve_swap.log (allocation_id) SELECT gen_random_uuid() FROM generate_series(1, 300000)")
        conn.commit()
    with head_db.connect(autocommit=True) as follower, head_db.connect(autocommit=True) as mover:
        following = swapping.InThread(lambda: follower.execute("SELECT reserve_swap.replay(1000000, false)").fetchone())
        wait_until(lambda: mover.execute(
            "SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s", (follower.info.backend_pid,)
        ).fetchone()[0], "the follower to replay")
        time.sleep(0.2)
        mover.execute("SET lock_timeout = '1s'")
        started = time.monotonic()
        changelog.replay(PsycopgSession(mover), 10)  # the emergency rollback's first batch
        assert time.monotonic() - started < 1.0
        with pytest.raises(psycopg.errors.QueryCanceled):
            following.result()


def test_follow_skips_a_round_a_mover_holds_and_survives_being_cancelled(head_db: Database):
    venue, _ = swapping.two_venues(head_db)
    with head_db.connect() as mover:
        written = swapping.insert(mover, venue.id, venue.tables[0], slot(2))
        mover.commit()
        mover.execute("SELECT pg_advisory_xact_lock(hashtext('reserve_swap.replay'))")  # a mover replaying
        lines: list[str] = []
        report = swap_window.follow(head_db.url, interval_s=0.1, rounds=2, progress=lines.append)
        assert report.exit_code == 0 and len(lines) == 2 and "log 1 rows" in lines[-1], lines
        mover.rollback()
    report = swap_window.follow(head_db.url, interval_s=0.1, rounds=1)
    with head_db.connect() as conn:
        assert written in {row[0] for row in swapping.rows(conn, swap_state.SHADOW)} and report.exit_code == 0


# ---------------------------------------------------------------- a subscriber (item 13)

def test_a_database_that_subscribes_to_allocations_is_refused_the_online_method(pre_swap_db: Database, clone,
                                                                                templates):
    publisher = clone(templates["pre_swap"])
    with publisher.connect(autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION bookings_out FOR TABLE public.allocations")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"sub_{pre_swap_db.name}",))
    conninfo = publisher.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with pre_swap_db.connect(autocommit=True) as conn:
        try:
            conn.execute(f"CREATE SUBSCRIPTION analytics_copy CONNECTION '{conninfo}' PUBLICATION bookings_out "
                         f"WITH (create_slot = false, slot_name = 'sub_{pre_swap_db.name}', copy_data = false)")
            found = refusals.find(PsycopgSession(conn))
            assert any(line.startswith("subscription analytics_copy: it applies its publisher's changes to "
                                       "allocations by OID") for line in found), found
            with pytest.raises(CommandError, match="subscription analytics_copy"):
                online.build(swapping.session(conn), "upgrade", NEW_GUARD, action=swapping.ACTION)
            assert not swap_state.exists(conn)
        finally:
            conn.execute("ALTER SUBSCRIPTION analytics_copy DISABLE")
            conn.execute("ALTER SUBSCRIPTION analytics_copy SET (slot_name = NONE)")
            conn.execute("DROP SUBSCRIPTION analytics_copy")
    with publisher.connect(autocommit=True) as conn:
        wait_until(lambda: not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                            (f"sub_{pre_swap_db.name}",)).fetchone()[0], "the walsender to stop")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (f"sub_{pre_swap_db.name}",))
