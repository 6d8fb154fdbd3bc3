"""reserve.schema.swap.online's backfill: batches of pages in physical order that lock their source rows, so that a
write racing a batch can neither be lost nor undone by an older copy. Interleavings driven from several connections."""

from __future__ import annotations

import pytest

from reserve.schema.swap import state as swap_state
from tests import swapping
from tests.support import Database, slot

BATCH = 1  # page


@pytest.fixture
def with_rows(pre_swap_db: Database):
    """Below the swap, 40 allocations in two venues, the standby built and empty."""
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
    assert "was rewritten during the backfill: copying again from its first page" in caplog.text


def test_a_row_deleted_while_its_batch_holds_it_is_not_resurrected(with_rows: Database):
    with with_rows.connect(autocommit=True) as backfill, with_rows.connect() as app, \
            with_rows.connect(autocommit=True) as look:
        first = _ids(look)
        victim = first[1]  # in the first batch
        backfill.execute("BEGIN")  # the real batch, inside a transaction held open after it (a slow batch)
        assert swapping.copy_batch(backfill, BATCH) == len(first)
        delete = swapping.InThread(lambda: (app.execute("DELETE FROM allocations WHERE id = %s", (victim,)),
                                            app.commit()))
        swapping.wait_until(lambda: swapping.waiting_for_a_lock(look, app.info.backend_pid),
                            "the delete to wait for the batch's row lock")
        backfill.execute("COMMIT")
        delete.result()
        swapping.backfill_rest(look, BATCH)
        assert victim not in {row[0] for row in swapping.rows(look, "reserve_swap.allocations")}
        assert swapping.differences(look) == (set(), set())


def _batch_waits_for(db_: Database, statement: str, params: tuple) -> tuple:
    """``statement`` runs in an application transaction left open; the next batch reaches its row and waits for
    it; then the application commits and the batch ends. (The connection that looks, still open.)"""
    with db_.connect(autocommit=True) as backfill, db_.connect() as app, db_.connect(autocommit=True) as look:
        app.execute(statement, params)
        batch = swapping.InThread(lambda: swapping.copy_batch(backfill, BATCH))
        swapping.wait_until(lambda: swapping.waiting_for_a_lock(look, backfill.info.backend_pid),
                            "the batch to wait for the application's row lock")
        app.commit()
        batch.result()
        copied = swapping.rows(look, "reserve_swap.allocations")
        swapping.backfill_rest(look, BATCH)
        return copied, swapping.differences(look)


def test_a_row_deleted_before_its_batch_reaches_it_is_skipped_by_the_batch(with_rows: Database):
    with with_rows.connect() as look:
        victim = _ids(look)[1]
    copied, differences = _batch_waits_for(with_rows, "DELETE FROM allocations WHERE id = %s", (victim,))
    assert victim not in {row[0] for row in copied}
    assert differences == (set(), set())


def test_an_update_racing_its_batch_is_never_overwritten_by_the_older_copy(with_rows: Database):
    with with_rows.connect() as look:
        target = _ids(look)[2]
    new_window = slot(500)
    copied, differences = _batch_waits_for(
        with_rows, "UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s", (*new_window, target))
    assert next(row for row in copied if row[0] == target)[5].lower == new_window[0]
    assert differences == (set(), set())


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


def test_a_batch_cancelled_to_break_a_deadlock_with_the_application_is_tried_again(with_rows: Database, caplog):
    """An application transaction holds a row further on in the batch's pages and then reaches for one the batch
    has locked: a cycle. PostgreSQL cancels the batch (it waited first); the batch is tried again, the
    application's transaction commits, and the standby ends in step."""
    with with_rows.connect(autocommit=True) as backfill, with_rows.connect() as app, \
            with_rows.connect(autocommit=True) as look:
        first, _, later = _ids(look)[:3]
        app.execute("SET deadlock_timeout = '10s'")  # the batch, waiting first, is the one that finds the cycle
        app.execute("UPDATE allocations SET shadow = shadow WHERE id = %s", (later,))
        batch = swapping.InThread(lambda: swapping.copy_batch(backfill, BATCH))
        swapping.wait_until(lambda: swapping.waiting_for_a_lock(look, backfill.info.backend_pid),
                            "the batch to lock the first row and wait for the application's")
        app.execute("UPDATE allocations SET shadow = shadow WHERE id = %s", (first,))  # the cycle
        app.commit()
        batch.result()
        swapping.backfill_rest(look, BATCH)
        assert swapping.differences(look) == (set(), set())
    assert "cancelled to break a deadlock" in caplog.text
