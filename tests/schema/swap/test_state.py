"""reserve.schema.swap.state: one table of phases and transitions, and a compare-and-set that refuses to move a swap
from a phase it is no longer in (another run moved it), with nothing changed."""

from __future__ import annotations

import re

import pytest

from reserve.schema.swap import state as swap_state
from reserve.schema.swap import teardown
from tests import swapping
from tests.support import Database


def _phase_check(conn) -> set[str]:
    (definition,) = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = "
                                 "'state_phase_check' AND conrelid = 'reserve_swap.state'::regclass").fetchone()
    return set(re.findall(r"'(\w+)'::text", definition))


def test_the_machinery_allows_exactly_the_phases_the_state_table_names(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
        assert _phase_check(conn) == set(swap_state.PHASES)
    assert {phase for pair in swap_state.TRANSITIONS for phase in pair} | set(swap_state.DROPPABLE["drop"]) \
        == set(swap_state.PHASES)  # every phase is reached and left


def test_a_phase_change_moves_only_from_the_phase_it_names_and_refuses_a_stale_one(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
        swap_state.advance(conn, swap_state.BUILDING, swap_state.BACKFILLED)
        found = swap_state.read(conn)
        assert found.phase == swap_state.BACKFILLED and found.backfilled_at is not None
        with pytest.raises(swap_state.StateMoved, match="to move from building to backfilled, but it is backfilled"):
            swap_state.advance(conn, swap_state.BUILDING, swap_state.BACKFILLED)
        assert swap_state.read(conn) == found  # nothing changed


def test_a_move_the_state_table_does_not_allow_is_refused_before_any_sql():
    with pytest.raises(ValueError, match="no transition from building to window"):
        swap_state.advance(None, swap_state.BUILDING, swap_state.WINDOW)
    with pytest.raises(ValueError, match="cannot set rows_copied"):
        swap_state.advance(None, swap_state.BUILDING, swap_state.BACKFILLED, rows_copied="0")


def test_the_teardown_refuses_a_phase_it_may_not_drop_from_with_nothing_changed(head_db: Database):
    """A drop that read `detached` and finds the window open once its locks are granted changes nothing."""
    with head_db.connect(autocommit=True) as conn:
        with pytest.raises(swap_state.StateMoved, match="the online swap is window, not detached or retired"):
            teardown.drop_retired(swapping.session(conn), action="test drop")
        assert swap_state.read(conn).phase == swap_state.WINDOW
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == \
            conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]  # not emptied


def test_a_window_opened_by_an_older_release_is_closed_through_the_detached_phase(head_db: Database):
    """The window stays open for days, across deploys: machinery whose CHECK lacks `detached` is brought up to date
    by the first step that moves there."""
    with head_db.connect(autocommit=True) as conn:
        older = ", ".join(f"'{name}'" for name in swap_state.PHASES if name != swap_state.DETACHED)
        conn.execute("ALTER TABLE reserve_swap.state DROP CONSTRAINT state_phase_check")
        conn.execute(f"ALTER TABLE reserve_swap.state ADD CONSTRAINT state_phase_check CHECK (phase IN ({older}))")
        teardown.detach(swapping.session(conn), action="test finish")
        assert swap_state.read(conn).phase == swap_state.DETACHED
        assert _phase_check(conn) == set(swap_state.PHASES)
