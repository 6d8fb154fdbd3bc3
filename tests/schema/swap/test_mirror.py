"""reserve.schema.swap.mirror: every committed write reaches the standby, by its final state, and no write of the
application ever fails because of it. Interleavings are driven from several connections."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests import swapping
from tests.support import Database, slot


@pytest.fixture
def building(pre_swap_db: Database):
    """Below the swap, two venues, the standby built for the upgrade (its guard: allocations_no_overlap)."""
    venues = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    return pre_swap_db, venues


@pytest.fixture
def in_window(head_db: Database):
    """At head with the window open: the previous table, with the stronger old guard, kept in step."""
    venues = swapping.two_venues(head_db)
    return head_db, venues


def test_inserts_updates_and_deletes_reach_the_standby_at_commit_and_not_before(building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        first = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        second = swapping.insert(app, venue.id, venue.tables[1], slot(2))
        assert swapping.rows(look, "reserve_swap.allocations") == set()  # not committed: nothing copied yet
        app.commit()
        assert swapping.differences(look) == (set(), set())
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(5), first))
        app.execute("DELETE FROM allocations WHERE id = %s", (second,))
        app.commit()
        assert swapping.differences(look) == (set(), set())
        assert {row[0] for row in swapping.rows(look, "reserve_swap.allocations")} == {first}


def test_a_rolled_back_write_leaves_the_standby_as_it_was(building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        kept = swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        before = swapping.rows(look, "reserve_swap.allocations")
        swapping.insert(app, venue.id, venue.tables[1], slot(2))
        app.execute("DELETE FROM allocations WHERE id = %s", (kept,))
        app.rollback()
        assert swapping.rows(look, "reserve_swap.allocations") == before
        assert swapping.differences(look) == (set(), set())


def test_a_transaction_that_passes_through_an_overlap_and_repairs_it_commits_and_is_mirrored_by_its_final_state(
        building):
    """The old guard is INITIALLY DEFERRED: swapping two allocations' windows passes through an overlap in the
    same restaurant, which the standby's allocations_no_overlap refuses at once. The mirror copies at commit."""
    db_, (venue, _) = building
    early, late = slot(2), slot(6)
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        a = swapping.insert(app, venue.id, venue.tables[0], early)
        b = swapping.insert(app, venue.id, venue.tables[0], late)
        app.commit()
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*late, a))  # overlaps b
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*early, b))  # repaired
        app.commit()
        assert swapping.differences(look) == (set(), set())
        assert swapping.conflict_ids(look) == set()


def test_the_same_resource_in_two_restaurants_commits_and_is_recorded_when_the_standby_cannot_take_it(in_window):
    """In the window the previous table keeps the old, global guard: a row legal under the new guard that it
    refuses does not fail the application's commit; it is recorded, and the rollback is then not instant."""
    db_, (a, b) = in_window
    window = slot(3)
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        first = swapping.insert(app, a.id, a.tables[0], window)
        app.commit()
        twin = swapping.insert(app, b.id, a.tables[0], window)  # the same resource, another restaurant
        app.commit()
        assert swapping.conflict_ids(look) == {twin}
        live, standby = swapping.differences(look)
        assert {row[0] for row in live} == {twin} and standby == set()
        app.execute("DELETE FROM allocations WHERE id = %s", (twin,))  # resolved: the record goes with it
        app.commit()
        assert swapping.conflict_ids(look) == set()
        assert swapping.differences(look) == (set(), set())
        assert first in {row[0] for row in swapping.rows(look, "reserve_swap.allocations")}


def test_two_transactions_committing_at_the_same_moment_both_commit_whatever_the_standby_refuses(in_window):
    """Each inserts, in its own restaurant, two allocations on two resources the other uses at the same time:
    legal under the live guard, crossing under the previous table's. Committed together, the standby's copies
    wait for each other (or deadlock, which PostgreSQL breaks): both application commits succeed, and every
    row the standby could not take is recorded."""
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

        commits = [swapping.InThread(lambda c=c: commit(c)) for c in (t1, t2)]
        for done in commits:
            done.result()  # neither raised
        in_standby = {row[0] for row in swapping.rows(look, "reserve_swap.allocations")}
        recorded = swapping.conflict_ids(look)
        assert set(ids) == in_standby | recorded and not in_standby & recorded
        assert recorded, "the previous table's guard allows only one restaurant per resource and window"
        assert {row[0] for row in swapping.rows(look, "public.allocations")} >= set(ids)


def test_a_repeatable_read_writer_is_never_failed_by_the_mirror(building):
    db_, (venue, _) = building
    with db_.connect() as setup:
        target = swapping.insert(setup, venue.id, venue.tables[0], slot(2))
        setup.commit()
    with db_.connect() as app, db_.connect(autocommit=True) as other:
        app.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        app.execute("SELECT count(*) FROM allocations")  # its snapshot: before the backfill's copy below
        swapping.backfill_rest(other)
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(8), target))
        app.commit()
        # The copy it could not see is recorded (or replaced), never a failed commit; the exchange retries it.
        live, standby = swapping.differences(other)
        assert {row[0] for row in live | standby} <= swapping.conflict_ids(other)


def test_truncate_empties_the_standby(building):
    db_, (venue, _) = building
    with db_.connect() as app, db_.connect(autocommit=True) as look:
        swapping.insert(app, venue.id, venue.tables[0], slot(2))
        app.commit()
        app.execute("TRUNCATE allocations CASCADE")
        app.commit()
        assert swapping.rows(look, "reserve_swap.allocations") == set()
