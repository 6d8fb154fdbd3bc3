"""Faults during the swap and its rollback: each leaves the database exactly at a revision boundary
(catalog equal to that revision's shipped expectation, alembic_version naming it, no row lost), and a
plain rerun of ``alembic upgrade head`` finishes.

Alembic runs as a subprocess, as an operator runs it, so that its backend can be terminated and the
client itself killed. Where the fault must hit a statement in progress, the table holds enough rows
for the guard's index build to take a good fraction of a second; where it must hit a wait, another
session holds a lock on allocations. A module-scoped template (data at the revision below the swap, and the
same at head) is cloned for every test, so the data is generated once.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reserve import db
from reserve.rollout import alembic_runner, dataset
from reserve.schema import catalog, pending
from tests import faults
from tests.support import REVISIONS, Database

BELOW_SWAP, HEAD = REVISIONS[-2], REVISIONS[-1]
# Enough for the guard's index build to last ~1 s here: time to see it running and interrupt it.
ROWS = 60_000
# The swap waits for a blocker up to this long, in one attempt (the fault comes well before).
WAIT_FOR_BLOCKER = ["-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1"]
UPGRADE_RAN = f"Running upgrade {BELOW_SWAP} -> {HEAD}"
_clones = itertools.count(1)


def _admin(pg_server: Any) -> Any:
    return db.connect(pg_server.url(getattr(pg_server, "maintenance_db", "postgres")), autocommit=True)


@pytest.fixture(scope="module")
def data_templates(pg_server: Any) -> Iterator[dict[str, str]]:
    """Two template databases with ROWS generated allocations: below the swap and at head."""
    names = {BELOW_SWAP: f"reserve_faults_below_{os.getpid()}", HEAD: f"reserve_faults_head_{os.getpid()}"}
    try:
        with _admin(pg_server) as admin:
            admin.execute(f'CREATE DATABASE "{names[BELOW_SWAP]}"')
        below = pg_server.url(names[BELOW_SWAP])
        alembic_runner.upgrade(below, BELOW_SWAP)
        with db.connect(below, autocommit=True) as conn:
            dataset.generate(conn, dataset.Shape.for_rows(ROWS))
            conn.execute("VACUUM ANALYZE")
        with _admin(pg_server) as admin:
            admin.execute(f'CREATE DATABASE "{names[HEAD]}" TEMPLATE "{names[BELOW_SWAP]}"')
        alembic_runner.upgrade(pg_server.url(names[HEAD]), "head")
        yield names
    finally:
        with _admin(pg_server) as admin:
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _clone(pg_server: Any, template: str) -> Iterator[Database]:
    name = f"reserve_faults_{os.getpid()}_{next(_clones)}"
    with _admin(pg_server) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield Database(name, pg_server.url(name))
    finally:
        with _admin(pg_server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def below_swap(pg_server: Any, data_templates: dict[str, str]) -> Iterator[Database]:
    """A fresh database below the swap (old guard) with ROWS allocations."""
    yield from _clone(pg_server, data_templates[BELOW_SWAP])


@pytest.fixture
def at_head(pg_server: Any, data_templates: dict[str, str]) -> Iterator[Database]:
    """A fresh database at head (allocations_no_overlap) with ROWS allocations."""
    yield from _clone(pg_server, data_templates[HEAD])


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
    code, output = faults.run_alembic(db_.url, "upgrade", "head")
    assert code == 0, output
    assert_at(db_, HEAD, rows_before)


def monitor(db_: Database) -> Any:
    return db_.connect(autocommit=True)


# ---------------------------------------------------------------- the backend terminated


def test_upgrade_backend_terminated_while_the_swap_waits_for_its_lock(below_swap: Database):
    before = rows(below_swap)
    with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"), monitor(below_swap) as dba:
        proc = faults.start_alembic(below_swap.url, *WAIT_FOR_BLOCKER, "upgrade", "head")
        backend = faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True,
                                          proc=proc)
        assert faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, below_swap.url)
    assert code != 0 and "terminating connection due to administrator command" in output, output
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_upgrade_backend_terminated_while_building_the_new_guard_under_the_lock(below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        proc = faults.start_alembic(below_swap.url, "upgrade", "head")
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
        proc = faults.start_alembic(at_head.url, "downgrade", "-1")
        backend = faults.wait_for_backend(dba, query_contains="CREATE INDEX CONCURRENTLY", waiting_on_lock=True,
                                          proc=proc)
        assert faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, at_head.url)
        reporter.rollback()
    assert code != 0 and "allocations_resource_window_excl is restored, and that is committed" in output, output
    with at_head.connect() as conn:
        where = faults.boundary(conn)
        between = pending.identify(where.recorded, catalog.snapshot(conn), where.pending_indexes)
    assert where.recorded == HEAD and where.at is None  # between revisions, on purpose
    assert where.pending_indexes == ["reserve_pending_allocations_resource_window_idx"]  # invalid, outside the catalog
    assert between is not None and between.command == "alembic downgrade -1"
    assert rows(at_head) == before

    # The rollback converges: a rerun keeps the guard, drops the half-built index and builds it.
    code, output = faults.run_alembic(at_head.url, "downgrade", "-1")
    assert code == 0, output
    assert assert_at(at_head, BELOW_SWAP, before).pending_indexes == []


def test_downgrade_backend_terminated_while_building_the_old_guard_under_the_lock(at_head: Database):
    before = rows(at_head)
    with monitor(at_head) as dba:
        proc = faults.start_alembic(at_head.url, "downgrade", "-1")
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
    code, output = faults.run_alembic(below_swap.url, "-x", "statement_timeout=250ms", "upgrade", "head")
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
        proc = faults.start_alembic(below_swap.url, "upgrade", "head")
        backend = faults.wait_for_backend(dba, query_contains="ADD CONSTRAINT allocations_no_overlap",
                                          waiting_on_lock=False, proc=proc)
        faults.kill_client(proc)
        proc.wait(timeout=10)
        # Nobody will send COMMIT: the orphaned backend notices the client is gone (client_connection_check_interval,
        # set by env.py) or finishes its statement, and rolls back.
        faults.wait_gone(dba, backend.pid, timeout_s=60)
    assert_at(below_swap, BELOW_SWAP, before)
    assert_rerun_reaches_head(below_swap, before)


def test_client_killed_while_the_swap_waits_then_an_immediate_rerun_waits_for_the_orphan(below_swap: Database):
    before = rows(below_swap)
    with monitor(below_swap) as dba:
        with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
            proc = faults.start_alembic(below_swap.url, *WAIT_FOR_BLOCKER, "upgrade", "head")
            orphan = faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True,
                                             proc=proc)
            faults.kill_client(proc)
            killed_at = time.monotonic()
            proc.wait(timeout=10)
            # The rerun starts at once; the orphan still holds the migration lock, so the rerun queues behind it.
            rerun = faults.start_alembic(below_swap.url, "upgrade", "head")
            faults.wait_until(lambda: faults.advisory_waiters(dba) == 1, "the rerun to queue for the migration lock",
                              procs=[rerun])
        faults.wait_gone(dba, orphan.pid)
        orphan_s = time.monotonic() - killed_at
        code, output = faults.finish(rerun, below_swap.url)
    # The orphan lives on, holding the migration lock, until its statement ends (here: the blocker goes and
    # LOCK TABLE is granted) and it finds the client gone; it never commits, so the rerun does the work.
    assert orphan_s < 30
    assert code == 0, output
    assert "another migration run is in progress" in output and UPGRADE_RAN in output, output
    assert_at(below_swap, HEAD, before)


# ---------------------------------------------------------------- two runs at once


def test_two_upgrades_at_once_both_end_at_head_one_waiting_for_the_other(below_swap: Database):
    before = rows(below_swap)
    runs = []
    try:
        with monitor(below_swap) as dba:
            # A blocker keeps the first run inside the swap until the second is seen queued for the migration lock.
            with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
                runs = [faults.start_alembic(below_swap.url, *WAIT_FOR_BLOCKER, "upgrade", "head") for _ in range(2)]
                faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True,
                                        proc=runs[0])
                faults.wait_until(lambda: faults.advisory_waiters(dba) == 1, "the second run to queue", procs=runs)
            results = [faults.finish(run, below_swap.url) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for code, output in results:
        assert code == 0, output
    outputs = [output for _, output in results]
    assert sum(UPGRADE_RAN in output for output in outputs) == 1, outputs
    assert sum("another migration run is in progress" in output for output in outputs) == 1, outputs
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
        proc = faults.start_alembic(at_head.url, "downgrade", "-1")
        faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True, proc=proc)
        writer.commit()
        code, output = faults.finish(proc, at_head.url)
    assert code != 0
    assert "written after the pre-check break allocations_resource_window_excl" in output, output
    assert "Nothing was changed" in output
    assert_at(at_head, HEAD, rows(at_head))

    code, output = faults.run_alembic(at_head.url, "downgrade", "-1")
    assert code != 0 and str(twin) in output, output  # the rerun's pre-check names the row
    assert_at(at_head, HEAD, rows(at_head))
