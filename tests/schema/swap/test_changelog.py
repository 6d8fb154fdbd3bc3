"""reserve.schema.swap.changelog: every committed write is logged in the writer's transaction and replayed into
the shadow by its final, committed state, whatever the writer's isolation level or replication role; nothing in
the application's transaction can fail or open a subtransaction because of it. Interleavings are driven from
several connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from alembic.util import CommandError

from tests import swapping
from tests.support import Database, slot

SHADOW = "reserve_swap.allocations"
MOVE = "UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s"


@pytest.fixture
def building(pre_swap_db: Database):
    """Below the swap, two venues, the shadow built for the upgrade, the capture on (phase: building)."""
    venues = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    return pre_swap_db, venues


@pytest.fixture
def in_window(head_db: Database):
    """At head with the window open: the previous table, with the stronger old guard, kept in step by replay."""
    venues = swapping.two_venues(head_db)
    return head_db, venues


def ids_in(conn: psycopg.Connection, table: str) -> set:
    return {row[0] for row in swapping.rows(conn, table)}


def log_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM reserve_swap.log").fetchone()[0]


def test_inserts_updates_and_deletes_are_logged_at_commit_and_replayed_by_their_final_state(building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        first = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        second = swapping.insert(app, venue.id, venue.tables[1], slot(2))
        assert log_rows(look) == 0  # not committed: nothing visible to the replay
        app.commit()
        assert log_rows(look) == 2
        app.execute(MOVE, (*slot(5), first))
        app.execute("DELETE FROM allocations WHERE id = %s", (second,))
        app.commit()
        swapping.replay(look)
        assert log_rows(look) == 0
        assert swapping.differences(look) == (set(), set())
        assert ids_in(look, SHADOW) == {first}


def test_a_rolled_back_write_leaves_no_log_row(building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        swapping.insert(app, venue.id, venue.tables[1], slot(2))
        app.rollback()
        assert log_rows(look) == 0


def test_a_transaction_that_passes_through_an_overlap_and_repairs_it_is_replayed_by_its_final_state(in_window):
    """The live guard is checked in the statement; the previous table's old guard would refuse the intermediate
    state of a swap of two windows in one restaurant, which the replay never sees."""
    db_, (venue, _) = in_window
    early, late = slot(2), slot(6)
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        a = swapping.insert(app, venue.id, venue.tables[0], early)
        b = swapping.insert(app, venue.id, venue.tables[1], late)
        app.commit()
        app.execute(MOVE, (*late, a))
        app.execute(MOVE, (*early, b))
        app.commit()
        swapping.replay(look)
        assert swapping.differences(look) == (set(), set())
        assert swapping.conflict_ids(look) == set()


def test_the_same_resource_in_two_restaurants_commits_and_is_recorded_when_the_previous_table_cannot_take_it(
        in_window):
    """In the window the previous table keeps the old, global guard: a row legal under the new guard that it
    refuses does not fail the application's commit; the replay records it, and the rollback is not instant."""
    db_, (a, b) = in_window
    window = slot(3)
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        first = swapping.insert(app, a.id, a.tables[0], window)
        app.commit()
        twin = swapping.insert(app, b.id, a.tables[0], window)  # the same resource, another restaurant
        app.commit()
        swapping.replay(look)
        assert swapping.conflict_ids(look) == {twin}
        live, shadow = swapping.differences(look)
        assert {row[0] for row in live} == {twin} and shadow == set()
        app.execute("DELETE FROM allocations WHERE id = %s", (twin,))  # resolved: the record goes with it
        app.commit()
        swapping.replay(look)
        assert swapping.conflict_ids(look) == set()
        assert swapping.differences(look) == (set(), set())
        assert first in ids_in(look, SHADOW)


def test_two_transactions_committing_at_the_same_moment_both_commit_and_every_refusal_is_recorded(in_window):
    db_, (a, b) = in_window
    window = slot(4)
    r1, r2 = a.tables[0], a.tables[1]
    with db_.connect() as t1, db_.connect() as t2, db_.connect(autocommit=True) as look:
        ids = [swapping.insert(t1, a.id, r1, window), swapping.insert(t1, a.id, r2, window),
               swapping.insert(t2, b.id, r2, window), swapping.insert(t2, b.id, r1, window)]
        barrier = threading.Barrier(2)

        def commit(conn: psycopg.Connection) -> None:
            barrier.wait()
            conn.commit()

        for done in [swapping.InThread(lambda c=c: commit(c)) for c in (t1, t2)]:
            done.result()  # neither raised
        swapping.replay(look)
        in_shadow, recorded = ids_in(look, SHADOW), swapping.conflict_ids(look)
        assert set(ids) == in_shadow | recorded and not in_shadow & recorded
        assert recorded, "the previous table's guard allows only one restaurant per resource and window"


@contextmanager
def a_snapshot_older_than_the_copy_of_a_row(building, isolation: str) -> Iterator[tuple[Any, Any, Any]]:
    """(the application's connection, the swap's, the row): the application's snapshot is taken, then a batch
    copies the row and commits; the application then writes the row under its older snapshot."""
    db_, (venue, _) = building
    with db_.connect() as setup:
        row = swapping.insert(setup, venue.id, venue.tables[0], slot(2))
        setup.commit()
    with db_.connect() as app, db_.connect(autocommit=True) as swap:
        app.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        app.execute("SELECT 1")  # its snapshot: before the copy
        swapping.copy_batch(swap, pages=1000)
        assert row in ids_in(swap, SHADOW)
        yield app, swap, row


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_delete_under_a_snapshot_older_than_the_copy_does_not_come_back(building, isolation: str):
    """The replay never uses the writer's snapshot: the row is gone from the shadow, and after the exchange
    from the table."""
    with a_snapshot_older_than_the_copy_of_a_row(building, isolation) as (app, swap, doomed):
        app.execute("DELETE FROM allocations WHERE id = %s", (doomed,))
        app.commit()
        swapping.backfill_rest(swap)
        swapping.exchange_forward(swap)
        assert doomed not in ids_in(swap, "public.allocations") | ids_in(swap, SHADOW)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_an_update_under_a_snapshot_older_than_the_copy_is_replayed(building, isolation: str):
    with a_snapshot_older_than_the_copy_of_a_row(building, isolation) as (app, swap, moved):
        app.execute(MOVE, (*slot(9), moved))
        app.commit()
        swapping.replay(swap)
        assert swapping.differences(swap) == (set(), set())


def test_a_replica_role_session_is_captured(building):
    """Logical replication's apply workers, pg_restore --disable-triggers and ETL tools write with
    session_replication_role = replica: the capture is ENABLE ALWAYS, so it fires for them too."""
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        app.execute("SET session_replication_role = replica")
        added = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        swapping.copy_batch(look, pages=1000)
        app.execute("DELETE FROM allocations WHERE id = %s", (added,))
        app.commit()
        swapping.replay(look)
        assert added not in ids_in(look, SHADOW)
        assert swapping.differences(look) == (set(), set())


def test_the_exchange_refuses_while_the_capture_is_disabled_and_carries_what_slipped_past_once_it_is_back(
        building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as swap:
        swapping.copy_batch(swap, pages=1000)
        app.execute("ALTER TABLE allocations DISABLE TRIGGER USER")
        unlogged = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        swapping.backfill_rest(swap)
        with pytest.raises(CommandError, match=r"trigger reserve_swap_capture on public\.allocations is disabled"):
            swapping.exchange_forward(swap)
        assert swap.execute("SELECT phase FROM reserve_swap.state").fetchone()[0] == "backfilled"  # nothing changed
        app.execute("ALTER TABLE allocations ENABLE ALWAYS TRIGGER reserve_swap_capture")
        app.execute("ALTER TABLE allocations ENABLE ALWAYS TRIGGER reserve_swap_capture_truncate")
        app.commit()
        swapping.exchange_forward(swap)  # the row-by-row comparison queued the row no trigger saw
        assert unlogged in ids_in(swap, "public.allocations")


def test_a_write_inside_the_window_with_the_capture_disabled_reaches_the_previous_table_before_the_rollback(
        in_window):
    db_, (venue, _) = in_window
    with db_.connect() as app:
        app.execute("ALTER TABLE allocations DISABLE TRIGGER reserve_swap_capture")
        unlogged = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        with pytest.raises(CommandError, match="reserve_swap_capture on public.allocations is disabled"):
            db_.downgrade("-1", x=["swap_method=online"])
        app.execute("ALTER TABLE allocations ENABLE ALWAYS TRIGGER reserve_swap_capture")
        app.commit()
    db_.downgrade("-1", x=["swap_method=online"])
    with db_.connect() as conn:
        assert unlogged in ids_in(conn, "public.allocations")


def test_a_transaction_that_writes_and_then_truncates_commits_inside_the_window(in_window):
    db_, (venue, _) = in_window
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        swapping.insert(app, venue.id, venue.tables[1], slot(2))
        app.execute("TRUNCATE allocations CASCADE")
        after = swapping.insert(app, venue.id, venue.tables[2], slot(3))
        app.commit()
        swapping.replay(look)
        assert ids_in(look, SHADOW) == {after}
        assert swapping.differences(look) == (set(), set())


def test_a_500_row_update_inside_the_window_consumes_one_transaction_id(in_window):
    """No subtransaction per row: the capture has no EXCEPTION block, so the statement's only transaction id is
    the writer's own (the synchronous mirror it replaces took two more per row)."""
    db_, (venue, _) = in_window
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        app.execute("INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                    "SELECT %s, 'table', %s, tstzrange(now() + make_interval(days => 400 + n), "
                    "now() + make_interval(days => 400 + n, hours => 1)) FROM generate_series(1, 500) n",
                    (venue.id, venue.tables[0]))
        app.commit()
        before = look.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0]
        updated = app.execute("UPDATE allocations SET \"window\" = tstzrange(lower(\"window\") + interval '1 minute',"
                              " upper(\"window\") + interval '1 minute') WHERE resource_id = %s",
                              (venue.tables[0],)).rowcount
        app.commit()
        after = look.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0]
        assert updated == 500
        assert after - before == 1
        assert log_rows(look) >= 1000  # both inserts and updates logged, one row each


def test_a_repeatable_read_writer_is_never_failed_by_the_capture(building):
    db_, (venue, _) = building
    with db_.connect() as setup:
        target = swapping.insert(setup, venue.id, venue.tables[0], slot(2))
        setup.commit()
    with db_.connect() as app, db_.connect(autocommit=True) as other:
        app.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        app.execute("SELECT count(*) FROM allocations")
        swapping.backfill_rest(other)
        app.execute(MOVE, (*slot(8), target))
        app.commit()
        swapping.replay(other)
        assert swapping.differences(other) == (set(), set())
