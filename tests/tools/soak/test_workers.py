"""What a soak worker does (tools.soak.workers): how it classifies errors, which slots it books, its plan."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.engine import make_url

from reserve.schema import guards
from tests.support import Database, Venue, confirm, slot
from tools.soak.run import BEFORE_HEAD
from tools.soak.workers import WorkerPlan, classify

TABLES = [(f"r{i // 20}", f"z{i // 10}", f"t{i}") for i in range(40)]
DAY0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_errors_are_classified_by_sqlstate_constraint_and_whether_the_overlap_was_deliberate(baseline_db: Database):
    baseline_db.upgrade(BEFORE_HEAD)
    with baseline_db.connect(autocommit=True) as conn:
        venue = Venue(conn, tables=1)

        def confirm_error(window: tuple[datetime, datetime]) -> psycopg.Error:
            booking = venue.booking(window)
            hold = venue.hold(venue.tables, window, booking=booking)
            with pytest.raises(psycopg.Error) as caught:
                confirm(venue.conn, hold, booking, key=str(booking))
            venue.conn.execute("DELETE FROM table_holds WHERE id = %s", (hold,))  # released, as a client does
            return caught.value

        first = venue.booking(slot(10))
        confirm(conn, venue.hold(venue.tables, slot(10), booking=first), first)
        old_guard = confirm_error(slot(11))  # deferred: raised at commit
        assert (old_guard.sqlstate, old_guard.diag.constraint_name) == ("23P01", guards.OLD_GUARD.name)
        with pytest.raises(psycopg.Error) as timeout:
            conn.execute("SET statement_timeout = '10ms'; SELECT pg_sleep(1)")
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(psycopg.Error) as undefined:
            conn.execute("SELECT * FROM no_such_table")
    baseline_db.upgrade("head")
    with baseline_db.connect(autocommit=True) as conn:
        venue.conn = conn
        new_guard = confirm_error(slot(11))  # immediate: raised inside the call
        assert (new_guard.sqlstate, new_guard.diag.message_primary) == ("P0001", guards.NEW_GUARD.name)

    assert classify(old_guard, overlap_item=True) == "rejected"
    assert classify(new_guard, overlap_item=True) == "rejected"
    assert classify(old_guard, overlap_item=False) == "unexpected"
    assert classify(new_guard, overlap_item=False) == "unexpected"
    assert classify(timeout.value, overlap_item=False) == "retryable"
    assert classify(undefined.value, overlap_item=True) == "unexpected"


def test_work_items_never_collide_and_deliberate_overlaps_sit_on_generated_allocations():
    plans = [WorkerPlan(i, 3, TABLES, DAY0, 4, 10, 0.0, "1s", "tag", url="") for i in range(3)]
    items = [plan.item(j) for plan in plans for j in range(200)]
    ordinary = [(table, start) for overlap, (_, _, table), start, _ in items if not overlap]
    assert len(ordinary) == len(set(ordinary)) == 3 * 150
    assert all(start.hour == 12 and (start - DAY0).days >= 60 for _, start in ordinary)
    for overlap, _, start, end in items:
        if overlap:  # across the generated 18:00-20:00 allocation of a day in 1..50
            assert 1 <= (start - DAY0).days <= 50 and start.hour == 19 and (end - start).seconds == 7200


def test_a_plan_survives_pickling_with_its_url_and_never_shows_the_password():
    url = make_url("postgresql+psycopg://soak:s3cr%2Ft@127.0.0.1:5433/reserve_soak?host=/tmp/pg")
    plan = WorkerPlan(0, 1, TABLES, DAY0, 10, 10, 0.0, "60s", "tag", WorkerPlan.render_url(url))
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and copy.database_url() == url and copy.database_url().password == "s3cr/t"
    assert "s3cr" not in repr(plan) and "s3cr" not in str(plan)
