"""bench.instruments: the timed sample, seen from the database (no timing asserts beyond a known sleep)."""

from __future__ import annotations

from bench import instruments
from tests.support import Database


def test_a_timed_statement_sees_the_lock_it_holds_from_the_database(head_db: Database):
    """The instrument, with a hold of known length (not a build's, which depends on the machine)."""
    held = instruments.timed_statements(head_db.url, ("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE",
                                                      "SELECT pg_sleep(0.3)"))
    assert held.holds == 1 and 0.1 < held.lock_s <= held.wall_s + 0.05
    shared = instruments.timed_statements(head_db.url, ("LOCK TABLE public.allocations IN SHARE MODE",
                                                        "SELECT pg_sleep(0.1)"))
    assert shared.holds == 0
