"""reserve.schema.swap.exchange and .dependents: everything that points at allocations by identity follows it
through the exchange (foreign keys, other tables' policies, views, publications, triggers, grants), nothing is
left depending on the table that left, and an exchange the shadow's guard cannot take is refused with ids."""

from __future__ import annotations

import logging

import pytest
from alembic.util import CommandError

from reserve.schema import guards
from reserve.schema.options import LockPolicy
from reserve.schema.session import PsycopgSession, take
from reserve.schema.swap import dependents, exchange, teardown
from reserve.schema.swap import state as swap_state
from tests import swapping
from tests.support import ONLINE, Database, slot

PLANTED = """
CREATE VIEW public.allocation_days AS SELECT id, restaurant_id, lower("window")::date AS day FROM public.allocations;
CREATE PUBLICATION realtime_allocations FOR TABLE public.allocations;
CREATE TABLE public.allocation_audit (n bigserial PRIMARY KEY, allocation uuid);
CREATE FUNCTION public.audit_allocation() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.allocation_audit (allocation) VALUES (NEW.id); RETURN NULL; END $$;
CREATE TRIGGER allocation_audit AFTER INSERT ON public.allocations FOR EACH ROW EXECUTE FUNCTION public.audit_allocation();
GRANT SELECT (id, restaurant_id) ON public.allocations TO authenticated;
COMMENT ON TABLE public.allocations IS 'the venues'' ledger';
"""


def _depending_on(conn, table: str) -> list[str]:
    return dependents.remaining(PsycopgSession(conn), table)


def _oid(conn, table: str) -> int:
    return conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]


def test_after_the_online_upgrade_nothing_outside_the_previous_table_points_at_it(head_db: Database):
    with head_db.connect() as conn:
        assert _depending_on(conn, swap_state.SHADOW) == []
        live = _oid(conn, swap_state.LIVE)
        policies = conn.execute(
            "SELECT DISTINCT p.polrelid::regclass::text FROM pg_depend d JOIN pg_policy p ON p.oid = d.objid "
            "WHERE d.classid = 'pg_policy'::regclass AND d.refobjid = %s AND p.polrelid <> %s ORDER BY 1",
            (live, live)).fetchall()
        keys = conn.execute("SELECT conrelid::regclass::text, convalidated FROM pg_constraint WHERE confrelid = %s "
                            "ORDER BY 1", (live,)).fetchall()
    # The 0003b policies of the two tables whose rows name an allocation read the new live table, by oid.
    assert [row[0] for row in policies] == ["booking_assignment_idempotency", "booking_table_assignments"]
    assert keys == [("booking_assignment_idempotency", True), ("booking_table_assignments", True)]


@pytest.mark.parametrize("then_back", [False, True], ids=["upgrade", "upgrade then exchange back"])
def test_a_view_a_publication_a_trigger_and_column_grants_follow_the_table(pre_swap_db: Database, then_back: bool):
    with pre_swap_db.connect() as conn:
        conn.execute(PLANTED)
        conn.commit()
    pre_swap_db.upgrade("head", x=ONLINE)
    if then_back:
        pre_swap_db.downgrade("-1")
    (venue, _) = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect() as conn:
        new = swapping.insert(conn, venue.id, venue.tables[0], slot(3))
        conn.commit()
        assert conn.execute("SELECT count(*) FROM allocation_days WHERE id = %s", (new,)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM allocation_audit WHERE allocation = %s", (new,)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'realtime_allocations' "
                            "AND schemaname = 'public' AND tablename = 'allocations'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM pg_publication_rel WHERE prrelid = 'public.allocations'::regclass"
                            ).fetchone()[0] == 1
        assert conn.execute("SELECT has_column_privilege('authenticated', 'public.allocations', 'restaurant_id', "
                            "'SELECT'), has_column_privilege('authenticated', 'public.allocations', 'window', "
                            "'SELECT')").fetchone() == (True, False)
        view_reads = conn.execute(
            "SELECT DISTINCT d.refobjid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "WHERE r.ev_class = 'public.allocation_days'::regclass AND d.refobjid <> r.ev_class").fetchall()
        assert [row[0] for row in view_reads] == ["allocations"]
        assert conn.execute("SELECT obj_description('public.allocations'::regclass, 'pg_class')").fetchone()[0] == \
            "the venues' ledger"
        if not then_back:
            assert _depending_on(conn, swap_state.SHADOW) == []


def test_the_standby_is_analyzed_before_it_becomes_live(pre_swap_db: Database):
    (venue, _) = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect() as conn:
        for n in range(50):
            swapping.insert(conn, venue.id, venue.tables[n % 3], slot(2 + 3 * n))
        conn.commit()
    pre_swap_db.upgrade("head", x=ONLINE)
    with pre_swap_db.connect() as conn:
        analyzed, tuples = conn.execute(
            "SELECT s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL, c.reltuples FROM pg_class c "
            "JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = 'public.allocations'::regclass").fetchone()
        statistics = conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' "
                                  "AND tablename = 'allocations'").fetchone()[0]
    assert analyzed and tuples == 50 and statistics > 0


def test_the_online_rebuild_refuses_a_row_the_old_guard_cannot_take_listing_the_pair_then_goes_on(head_db: Database):
    head_db.close_window()
    a, b = swapping.two_venues(head_db)
    window = slot(5)
    with head_db.connect(autocommit=True) as conn:
        first = swapping.insert(conn, a.id, a.tables[0], window)
        swapping.build(conn, "downgrade")
        swapping.backfill_rest(conn)  # the shadow carries the old, global guard from here
        twin = swapping.insert(conn, b.id, a.tables[0], window)  # the application's write goes through
        found = swap_state.read(conn)
        with pytest.raises(CommandError) as refused:
            exchange.forward(PsycopgSession(conn), found, guards.NEW_GUARD, swapping.OPTIONS, action="test swap")
        assert swapping.conflict_ids(conn) == {twin}
        assert f"{min(first, twin)} & {max(first, twin)}" in str(refused.value)
        assert guards.OLD_GUARD.name in str(refused.value)
        assert swap_state.read(conn).phase == swap_state.BACKFILLED  # nothing exchanged
        conn.execute("DELETE FROM allocations WHERE id = %s", (twin,))
        exchange.forward(PsycopgSession(conn), swap_state.read(conn), guards.NEW_GUARD, swapping.OPTIONS,
                         action="test swap")
        assert guards.is_in_place(conn, guards.OLD_GUARD)


def test_an_exchange_cancelled_to_break_a_deadlock_is_tried_again_and_the_application_commits(head_db: Database,
                                                                                              caplog):
    """The exchange locks the tables that point at allocations, then allocations; an application transaction that
    writes allocations and then reaches for one of those tables closes a cycle. PostgreSQL cancels the exchange's
    lock attempt (it waited first); the attempt is released whole and tried again once the application has
    committed."""
    with head_db.connect() as app, head_db.connect(autocommit=True) as dba, head_db.connect(autocommit=True) as ops:
        app.execute("SET deadlock_timeout = '10s'")  # the exchange, waiting first, is the one that finds the cycle
        app.execute("LOCK TABLE allocations IN ROW EXCLUSIVE MODE")  # as an allocation write does
        wanted = {"public.allocations": "ACCESS EXCLUSIVE", "public.booking_table_assignments": "ACCESS EXCLUSIVE"}

        def exchange_lock() -> None:
            with ops.transaction():
                take(swapping.session(ops), wanted, action="test exchange",
                     policy=LockPolicy("20s", attempts=3, pause_s=0.2))

        locking = swapping.InThread(exchange_lock)
        swapping.wait_until(lambda: swapping.waiting_for_a_lock(dba, ops.info.backend_pid),
                            "the exchange to hold booking_table_assignments and wait for allocations")
        app.execute("SELECT count(*) FROM booking_table_assignments")  # a cycle, which PostgreSQL breaks
        app.commit()
        locking.result()
    assert "given up to break a deadlock" in caplog.text


def test_closing_the_window_waits_for_a_writer_in_flight_and_never_deadlocks_with_its_capture(head_db: Database,
                                                                                             caplog):
    """A writer holding allocations appends to the change log from its capture trigger: a lock statement that held
    the log while it waited for allocations would close a cycle with every such writer (found by the benchmark's
    four writers: the exchange never got its locks). The swap's tables are locked after allocations."""
    caplog.set_level(logging.INFO, logger="reserve.schema.session")
    a, _ = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        swapping.insert(conn, a.id, a.tables[0], slot(3))
        conn.commit()
    with head_db.connect() as app, head_db.connect(autocommit=True) as dba, head_db.connect(autocommit=True) as ops:
        app.execute("SET deadlock_timeout = '10s'")  # only the closing could find a cycle
        (row,) = app.execute("SELECT id FROM allocations LIMIT 1 FOR UPDATE").fetchone()
        closing = swapping.InThread(lambda: teardown.detach(swapping.session(ops), action="test detach"))
        swapping.wait_until(lambda: swapping.waiting_for_a_lock(dba, ops.info.backend_pid),
                            "the closing to wait for allocations")
        app.execute("UPDATE allocations SET updated_at = now() WHERE id = %s", (row,))  # the capture appends
        app.commit()
        closing.result()
    assert "given up to break a deadlock" not in caplog.text
    assert "detaching the capture: ACCESS EXCLUSIVE on public.allocations, reserve_swap.allocations, " \
           "reserve_swap.log taken (attempt 1/" in caplog.text


def test_a_view_created_while_the_exchange_waits_for_its_lock_follows_the_table(pre_swap_db: Database):
    """The exchange reads what depends on allocations to know what to lock, and again once the locks are granted:
    a view created while it retried its lock (an application held allocations) is re-pointed, not left behind on
    the table that leaves."""
    swapping.exchange_with_ddl_queued(pre_swap_db, "CREATE VIEW public.allocation_days AS SELECT id, "
                                      "lower(\"window\")::date AS day FROM public.allocations")
    with pre_swap_db.connect() as conn:
        assert _depending_on(conn, swap_state.SHADOW) == []
        assert conn.execute("SELECT count(*) FROM public.allocation_days").fetchone()[0] == 1
        (reads,) = conn.execute("SELECT DISTINCT d.refobjid::regclass::text FROM pg_rewrite r JOIN pg_depend d "
                                "ON d.objid = r.oid WHERE r.ev_class = 'public.allocation_days'::regclass "
                                "AND d.refobjid <> r.ev_class AND d.refclassid = 'pg_class'::regclass").fetchone()
        assert reads == "allocations"
