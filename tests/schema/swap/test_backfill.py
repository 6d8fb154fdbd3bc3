"""reserve.schema.swap.online's backfill: the shadow filled in bulk, in physical order, with no row locks and no guard;
the change log replayed; then the guard built on the filled shadow: a write racing a batch is neither lost nor undone
by an older copy, and a stale copy makes no false conflict. Interleavings driven from several connections."""

from __future__ import annotations

import logging

import pytest
from alembic.util import CommandError

from reserve.schema.swap import state as swap_state
from reserve.schema.swap import teardown
from tests import swapping
from tests.support import Database, slot

BATCH = 1  # page


@pytest.fixture
def with_rows(pre_swap_db: Database):
    """Below the swap, 40 allocations in two venues, the shadow built and empty."""
    a, b = swapping.two_venues(pre_swap_db)
    with pre_swap_db.connect() as conn:
        swapping.spread_over_pages(conn)
        for n in range(40):
            venue = (a, b)[n % 2]
            swapping.insert(conn, venue.id, venue.tables[n % 3], slot(2 + 3 * n))
        conn.commit()
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    return pre_swap_db


def _ids(conn) -> list:
    ids = swapping.first_page_ids(conn)
    assert len(ids) >= 3, "the first batch should hold a few rows, not all"
    return ids


def test_the_backfill_copies_every_row_once_and_resumes_after_the_last_batch(with_rows: Database):
    with with_rows.connect(autocommit=True) as conn:
        first = _ids(conn)
        assert 3 <= swapping.copy_batch(conn, BATCH) == len(first) < 40
        assert swap_state.read(conn).rows_copied == len(first)
        assert {row[0] for row in swapping.rows(conn, "reserve_swap.allocations")} == set(first)
        swapping.backfill_rest(conn, BATCH)
        assert swap_state.read(conn).rows_copied == 40
        assert swapping.differences(conn) == (set(), set())


def test_a_rewrite_of_the_live_table_during_the_backfill_starts_it_again_from_the_first_page(with_rows: Database,
                                                                                             caplog):
    with with_rows.connect(autocommit=True) as conn:
        swapping.copy_batch(conn, 2)
        conn.execute("DELETE FROM allocations WHERE id = %s", (_ids(conn)[0],))
        conn.execute("VACUUM FULL allocations")  # every row moves: the pages copied so far now hold others
        swapping.backfill_rest(conn, BATCH)
        assert swapping.differences(conn) == (set(), set())  # rows moved to pages already passed are copied too
    assert "was rewritten during the copy: copying again from its first page" in caplog.text


def test_a_row_a_replay_put_in_the_shadow_during_the_copy_is_there_once_when_the_key_is_built(with_rows: Database,
                                                                                                   caplog):
    """A replay run beside the backfill (`reserve swap follow` started early) copies a row the copy has not reached;
    the copy then appends it again. The primary key, built after the copy, finds the id twice: both copies go, the
    id is logged, and the replay leaves the live row once."""
    caplog.set_level(logging.INFO, logger="reserve.schema.swap")
    with with_rows.connect(autocommit=True) as conn:
        swapping.copy_batch(conn, BATCH)
        (ahead,) = conn.execute("SELECT id FROM allocations WHERE ctid >= '(3,0)'::tid LIMIT 1").fetchone()
        conn.execute("UPDATE allocations SET is_maintenance = NOT is_maintenance WHERE id = %s", (ahead,))
        assert swapping.replay(conn) == 1
        swapping.backfill_rest(conn, BATCH)
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations WHERE id = %s", (ahead,)).fetchone()[0] == 1
        assert swapping.differences(conn) == (set(), set())
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == 40
    assert "1 ids were copied twice" in caplog.text


def test_a_batch_never_waits_for_an_application_transaction(with_rows: Database):
    """No row locks: a batch copies the committed version of a row an application transaction is changing, and
    the replay of that transaction's log row brings the shadow to its outcome."""
    with with_rows.connect(autocommit=True) as backfill, with_rows.connect() as app:
        victim, target = _ids(backfill)[1:3]
        app.execute("DELETE FROM allocations WHERE id = %s", (victim,))
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(500), target))
        copied = swapping.InThread(lambda: swapping.copy_batch(backfill, BATCH))
        assert copied.result(timeout_s=10) >= 3  # done while the application still holds both rows
        assert {victim, target} <= {row[0] for row in swapping.rows(backfill, "reserve_swap.allocations")}
        app.commit()
        swapping.backfill_rest(backfill, BATCH)
        assert victim not in {row[0] for row in swapping.rows(backfill, "reserve_swap.allocations")}
        assert swapping.differences(backfill) == (set(), set())


def test_a_row_deleted_after_its_batch_committed_is_not_resurrected(with_rows: Database):
    with with_rows.connect(autocommit=True) as backfill, with_rows.connect() as app:
        victim = _ids(backfill)[1]
        swapping.copy_batch(backfill, BATCH)
        app.execute("DELETE FROM allocations WHERE id = %s", (victim,))
        app.commit()
        swapping.backfill_rest(backfill, BATCH)
        assert victim not in {row[0] for row in swapping.rows(backfill, "reserve_swap.allocations")}
        assert swapping.differences(backfill) == (set(), set())


def test_the_guard_is_built_on_the_filled_shadow_so_a_stale_copy_makes_no_false_conflict(with_rows: Database):
    """Two rows of one restaurant and resource trade windows after the copy (passing through an overlap, as the
    old INITIALLY DEFERRED guard allows): with the guard built only after the log is replayed, no conflict."""
    with with_rows.connect(autocommit=True) as backfill, with_rows.connect() as app:
        a, b = app.execute("SELECT x.id, y.id FROM allocations x JOIN allocations y ON x.restaurant_id = "
                           "y.restaurant_id AND x.resource_id = y.resource_id AND x.id < y.id LIMIT 1").fetchone()
        swapping.copy_batch(backfill, 1000)
        assert backfill.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'reserve_swap.allocations'"
                                "::regclass AND contype = 'x'").fetchone()[0] == 0
        app.execute("UPDATE allocations x SET \"window\" = y.\"window\" FROM allocations y "
                    "WHERE (x.id, y.id) IN ((%s, %s), (%s, %s))", (a, b, b, a))
        app.commit()
        swapping.backfill_rest(backfill, BATCH)
        assert swapping.conflict_ids(backfill) == set()
        assert swapping.differences(backfill) == (set(), set())
        assert backfill.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'reserve_swap.allocations'"
                                "::regclass AND conname = 'allocations_no_overlap'").fetchone()[0] == 1


def test_on_the_way_down_rows_the_old_guard_refuses_stop_the_backfill_listing_them(head_db: Database):
    head_db.close_window()
    a, b = swapping.two_venues(head_db)
    with head_db.connect() as app:
        first = swapping.insert(app, a.id, a.tables[0], slot(3))
        twin = swapping.insert(app, b.id, a.tables[0], slot(3))  # legal under allocations_no_overlap only
        app.commit()
    with head_db.connect(autocommit=True) as conn:
        swapping.build(conn, "downgrade")
        with pytest.raises(CommandError, match="break allocations_resource_window_excl: "
                           f"{min(first, twin)} & {max(first, twin)}"):
            swapping.backfill_rest(conn)
        assert swap_state.read(conn).phase == swap_state.BUILDING  # nothing more was built
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'reserve_swap.allocations'::regclass "
                            "AND contype = 'x'").fetchone()[0] == 0


def test_an_update_after_its_batch_committed_replaces_the_copy(with_rows: Database):
    with with_rows.connect(autocommit=True) as look, with_rows.connect() as app:
        target = _ids(look)[0]
        swapping.copy_batch(look, BATCH)
        app.execute("UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*slot(700), target))
        app.commit()
        swapping.backfill_rest(look, BATCH)
        assert swapping.differences(look) == (set(), set())


def test_rows_inserted_behind_and_ahead_of_the_backfill_are_each_copied_once(with_rows: Database):
    a, _ = swapping.two_venues(with_rows)
    with with_rows.connect(autocommit=True) as look, with_rows.connect() as app:
        swapping.copy_batch(look, 3)
        look.execute("DELETE FROM allocations WHERE ctid < '(2,0)'::tid AND id <> ALL(%s)", (_ids(look)[:1],))
        look.execute("VACUUM allocations")  # room on pages the backfill has passed
        new = [swapping.insert(app, a.id, a.tables[0], slot(900 + 3 * n)) for n in range(30)]  # behind and ahead
        assert app.execute("SELECT count(*) FROM allocations WHERE ctid < '(2,0)'::tid AND id = ANY(%s)",
                           (new,)).fetchone()[0] > 0
        app.commit()
        swapping.backfill_rest(look, BATCH)
        assert set(new) <= {row[0] for row in swapping.rows(look, "reserve_swap.allocations")}
        assert swapping.differences(look) == (set(), set())
        live = look.execute("SELECT count(*) FROM allocations").fetchone()[0]
        assert look.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == live > 30


@pytest.mark.parametrize("ddl", ["ALTER TABLE allocations ADD COLUMN note text",
                                 "ALTER TABLE allocations DROP COLUMN created_by"], ids=["added", "dropped"])
def test_a_column_changed_during_the_copy_stops_it_with_nothing_more_copied_and_abort_undoes_it(
        with_rows: Database, ddl: str):
    """Rows move by position (SELECT *): a dropped column would silently shift or lose values, an added one would
    fail every batch. The copy stops, naming the way out, and the live table is untouched."""
    with with_rows.connect(autocommit=True) as conn:
        copied = swapping.copy_batch(conn, BATCH)
        conn.execute(ddl)
        with pytest.raises(CommandError, match="columns changed since its shadow was built.*reserve swap abort"):
            swapping.backfill_rest(conn, BATCH)
        found = swap_state.read(conn)
        assert found.phase == swap_state.BUILDING and found.rows_copied == copied
        teardown.abort(swapping.session(conn), action="test abort")
        assert swap_state.read(conn) is None
