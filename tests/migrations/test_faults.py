"""Faults during the locked swap (-x swap_method=locked) and its rollback: each leaves the database exactly at a revision boundary
(catalog equal to that revision's shipped expectation, alembic_version naming it, no row lost), and a
plain rerun of ``alembic upgrade head`` finishes.

Alembic runs as a subprocess, as an operator runs it, so that its backend can be terminated and the
client itself killed. Where the fault must hit a statement in progress, the table holds enough rows
for the guard's index build to take a good fraction of a second; where it must hit a wait, another
session holds a lock on allocations. The data templates of tests/migrations/conftest.py are cloned for
every test. The online method's faults are in test_online_faults.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from reserve.schema import catalog, unfinished
from tests import faults
from tests.datasets import BELOW_SWAP, HEAD, LOCKED_CLI
from tests.support import Database

pytestmark = pytest.mark.slow  # `make test-slow`: faults injected into the locked swap on a 60k-row dataset

# The swap waits for a blocker up to this long, in one attempt (the fault comes well before).
WAIT_FOR_BLOCKER = [*LOCKED_CLI, "-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1"]
UPGRADE_RAN = f"Running upgrade {BELOW_SWAP} -> {HEAD}"


# ---------------------------------------------------------------- shared assertions


ROW_COUNTS = "SELECT (SELECT count(*) FROM allocations), (SELECT count(*) FROM bookings), " \
             "(SELECT count(*) FROM booking_confirmation_results)"


def rows(db_: Database) -> tuple[int, ...]:
    with db_.connect() as conn:
        return tuple(conn.execute(ROW_COUNTS).fetchone())


def assert_at(db_: Database, revision: str, rows_before: tuple[int, ...]) -> faults.Boundary:
    """Exactly at ``revision``: recorded, catalog equal to its expectation, every row still there."""
    with db_.connect() as conn:
        where = faults.boundary(conn)
    assert where.recorded == revision, where
    assert where.differences == [], where.differences
    assert where.at == revision, where
    assert rows(db_) == rows_before
    return where


def assert_rerun_reaches_head(db_: Database, rows_before: tuple[int, ...]) -> None:
    code, output = faults.run_alembic(db_.url, *LOCKED_CLI, "upgrade", "head")
    assert code == 0, output
    assert_at(db_, HEAD, rows_before)


def monitor(db_: Database) -> Any:
    return db_.connect(autocommit=True)


# ---------------------------------------------------------------- the backend terminated


def test_upgrade_backend_terminated_while_the_swap_waits_for_its_lock(below_swap: Database):
    before = rows(below_swap)
    code, output = faults.terminated_while_waiting(below_swap.url, ("allocations", "ACCESS SHARE"),
                                                   "LOCK TABLE public.allocations", *WAIT_FOR_BLOCKER, "upgrade", "head")
    assert code != 0 and "terminating connection due to administrator command" in output, output
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_upgrade_backend_terminated_while_building_the_new_guard_under_the_lock(below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        proc = faults.start_alembic(below_swap.url, *LOCKED_CLI, "upgrade", "head")
        # By now the old guard and the redundant index are dropped, in the revision's transaction.
        backend = faults.wait_for_backend(dba, query_contains="ADD CONSTRAINT allocations_no_overlap",
                                          waiting_on_lock=False, proc=proc)
        assert faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, below_swap.url)
    assert code != 0 and "terminating connection due to administrator command" in output, output
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_downgrade_backend_terminated_while_the_index_build_waits_keeps_the_restored_guard(at_head: Database):
    before = rows(at_head)
    # A snapshot held elsewhere, no lock on allocations: the guard swap does not wait for it, the
    # concurrent index build after it does (outside any revision transaction).
    with at_head.connect() as reporter, monitor(at_head) as dba:
        reporter.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reporter.execute("SELECT count(*) FROM bookings")
        proc = faults.start_alembic(at_head.url, *LOCKED_CLI, "downgrade", "-1")
        backend = faults.wait_for_backend(dba, query_contains="CREATE INDEX CONCURRENTLY", waiting_on_lock=True,
                                          proc=proc)
        assert faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, at_head.url)
        reporter.rollback()
    assert code != 0 and "allocations_resource_window_excl is restored, and that is committed" in output, output
    with at_head.connect() as conn:
        where = faults.boundary(conn)
        between = unfinished.identify(where.recorded, catalog.snapshot(conn), where.pending_indexes)
    assert where.recorded == HEAD and where.at is None  # between revisions, on purpose
    assert where.pending_indexes == ["reserve_pending_allocations_resource_window_idx"]  # invalid, outside the catalog
    assert between is not None and between.command == "alembic downgrade -1"
    assert rows(at_head) == before

    # The rollback converges: a rerun keeps the guard, drops the half-built index and builds it.
    code, output = faults.run_alembic(at_head.url, *LOCKED_CLI, "downgrade", "-1")
    assert code == 0, output
    assert assert_at(at_head, BELOW_SWAP, before).pending_indexes == []


def test_downgrade_backend_terminated_while_building_the_old_guard_under_the_lock(at_head: Database):
    before = rows(at_head)
    with monitor(at_head) as dba:
        proc = faults.start_alembic(at_head.url, *LOCKED_CLI, "downgrade", "-1")
        backend = faults.wait_for_backend(dba, query_contains="ADD CONSTRAINT allocations_resource_window_excl",
                                          waiting_on_lock=False, proc=proc)
        assert faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, at_head.url)
    assert code != 0 and "terminating connection due to administrator command" in output, output
    where = assert_at(at_head, HEAD, before)
    assert where.pending_indexes == []  # the index is built only after the guard is back
    assert_rerun_reaches_head(at_head, before)


# ---------------------------------------------------------------- statement_timeout


def test_statement_timeout_while_building_the_new_guard(below_swap: Database):
    before = rows(below_swap)
    code, output = faults.run_alembic(below_swap.url, *LOCKED_CLI, "-x", "statement_timeout=250ms", "upgrade", "head")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    assert "ADD CONSTRAINT allocations_no_overlap" in output.split("statement timeout", 1)[1], output
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_statement_timeout_while_the_swap_waits_for_its_lock(below_swap: Database):
    before = rows(below_swap)
    with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
        code, output = faults.run_alembic(below_swap.url, *WAIT_FOR_BLOCKER, "-x", "statement_timeout=1s",
                                          "upgrade", "head")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    assert "LOCK TABLE public.allocations" in output.split("statement timeout", 1)[1], output
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


# ---------------------------------------------------------------- the client killed


def test_client_killed_while_building_the_new_guard(below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        proc = faults.start_alembic(below_swap.url, *LOCKED_CLI, "upgrade", "head")
        backend = faults.wait_for_backend(dba, query_contains="ADD CONSTRAINT allocations_no_overlap",
                                          waiting_on_lock=False, proc=proc)
        faults.kill_client(proc)
        proc.wait(timeout=10)
        # Nobody will send COMMIT: the orphaned backend notices the client is gone (client_connection_check_interval,
        # set by env.py) or finishes its statement, and rolls back.
        faults.wait_gone(dba, backend.pid, timeout_s=60)
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_client_killed_while_the_swap_waits_the_orphan_ends_during_its_wait_and_an_immediate_rerun_swaps(
        below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
            proc = faults.start_alembic(below_swap.url, *WAIT_FOR_BLOCKER, "upgrade", "head")
            orphan = faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True,
                                             proc=proc)
            faults.kill_client(proc)
            killed_at = time.monotonic()
            proc.wait(timeout=10)
            # The rerun starts at once: it queues for the migration lock while the orphan holds it, or finds it gone.
            rerun = faults.start_alembic(below_swap.url, *LOCKED_CLI, "upgrade", "head")
            # The orphan notices its client is gone while still waiting (client_connection_check_interval, set by
            # env.py), not when the blocker lets its statement end: the blocker is still here.
            faults.wait_gone(dba, orphan.pid, timeout_s=15)
            orphan_s = time.monotonic() - killed_at
        code, output = faults.finish(rerun, below_swap.url)
    assert orphan_s < 10
    assert code == 0, output
    assert UPGRADE_RAN in output, output
    assert_at(below_swap, HEAD, before)


# ---------------------------------------------------------------- two runs at once


def test_two_upgrades_at_once_both_end_at_head_one_waiting_for_the_other(below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        # A blocker keeps the first run inside the swap until the second is seen queued for the migration lock.
        with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
            runs = faults.start_two_runs(dba, below_swap.url, *WAIT_FOR_BLOCKER, "upgrade", "head", first_inside=lambda p:
                                         faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations",
                                                                 waiting_on_lock=True, proc=p))
        faults.assert_one_ran_and_the_other_waited([faults.finish(run, below_swap.url) for run in runs], UPGRADE_RAN)
    assert_at(below_swap, HEAD, before)
    with below_swap.connect() as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def test_boundary_tells_a_half_migrated_database_from_a_revision(below_swap: Database):
    """The check the tests rely on can fail: a database between revisions matches none."""
    with below_swap.connect() as conn:
        assert faults.boundary(conn).at == BELOW_SWAP
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_resource_window_excl")
        where = faults.boundary(conn)
        assert where.at is None and where.matching == []
        assert any("allocations_resource_window_excl" in line for line in where.differences)
        conn.rollback()



# ---------------------------------------------------------------- a conflicting write races the rollback's check


CROSS_RESTAURANT_TWIN = """
INSERT INTO allocations (restaurant_id, resource_type, resource_id, "window")
SELECT (SELECT r.id FROM restaurants r WHERE r.id <> a.restaurant_id ORDER BY r.id LIMIT 1),
       a.resource_type, a.resource_id, a."window"
FROM allocations a WHERE NOT a.shadow ORDER BY a.id LIMIT 1
RETURNING id"""


def test_downgrade_refuses_clearly_when_a_conflicting_row_commits_after_its_pre_check(at_head: Database):
    # The same resource booked in a second restaurant: allowed by allocations_no_overlap, not by the
    # old guard. Still uncommitted when the downgrade checks, so the check cannot see it; committed
    # while the downgrade waits for its lock on allocations, before the old guard is built.
    with at_head.connect() as writer, monitor(at_head) as dba:
        twin = writer.execute(CROSS_RESTAURANT_TWIN).fetchone()[0]
        proc = faults.start_alembic(at_head.url, *LOCKED_CLI, "downgrade", "-1")
        faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True, proc=proc)
        writer.commit()
        code, output = faults.finish(proc, at_head.url)
    assert code != 0
    assert "written after the pre-check break allocations_resource_window_excl" in output, output
    assert "Nothing was changed" in output
    assert_at(at_head, HEAD, rows(at_head))

    code, output = faults.run_alembic(at_head.url, *LOCKED_CLI, "downgrade", "-1")
    assert code != 0 and str(twin) in output, output  # the rerun's pre-check names the row
    assert_at(at_head, HEAD, rows(at_head))
