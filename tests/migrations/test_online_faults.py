"""Faults during the online swap, in each of its phases: the shadow's build, the backfill half done, the
exchange waiting for its lock, the exchange holding it, the foreign keys' validation, the exchange back in the
window, and the rollback's retired table.

Each fault is provoked for real (pg_terminate_backend, SIGKILL of the client, statement_timeout, a lock give-up)
on an Alembic subprocess, as an operator runs it. Each must end at a revision boundary, or in a state that
`reserve verify` names with the one command that completes it; in that state an application's writes go
through at once (none fails, none waits); and a plain rerun resumes where the fault stopped it (a batch
already copied is not copied again) and ends with the live table exactly as the application left it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest

from reserve.rollout.verify import verify
from reserve.schema import catalog, expectations
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import changelog
from reserve.schema.swap import state as swap_state
from tests import faults
from tests.datasets import BELOW_SWAP, HEAD, ROWS
from tests.support import Database

pytestmark = pytest.mark.slow  # `make test-slow`: faults injected into the online swap (timeouts, kills): seconds each

ONLINE = ["-x", "swap_method=online"]  # the method these faults are about (the default is locked)
# Small batches with a pause: the backfill of ROWS rows takes a few seconds, time to hit it half done.
SLOW_BACKFILL = ["-x", "swap_batch_rows=2000", "-x", "swap_batch_pause=0.1"]
# The exchange waits for a blocker up to this long, in one attempt (the fault comes well before).
WAIT_FOR_BLOCKER = ["-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1"]
RESUMED = re.compile(r"resuming the copy after (\d+) rows")


# ---------------------------------------------------------------- where the database stands


def swap_found(db_: Database) -> swap_state.SwapState | None:
    with db_.connect() as conn:
        return swap_state.read(conn)


def assert_named_by_verify(db_: Database, command: str) -> dict[str, Any]:
    """Between revisions on purpose: verify names what is left and the one command that completes it."""
    check = next(c for c in verify(db_.url).checks if c.name == "catalog")
    assert check.status == "fail" and "between revisions" in check.detail, check.detail
    assert check.data["command"] == command, check.data
    return check.data


def assert_at(db_: Database, revision: str, *, window: bool) -> None:
    with db_.connect() as conn:
        where = faults.boundary(conn)
    assert where.recorded == revision and where.at == revision, where.differences
    assert where.window_open is window


def assert_application_writes_go_through(db_: Database) -> list[str]:
    """Insert, update and delete allocations as the application does, each allowed 2 s at most; the ids kept."""
    with db_.connect() as app:
        app.execute("SET lock_timeout = '2s'")
        app.execute("SET statement_timeout = '2s'")
        restaurant, booking = app.execute(
            "SELECT restaurant_id, booking_id FROM allocations WHERE booking_id IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        kept = [row[0] for row in app.execute(
            "INSERT INTO allocations (restaurant_id, booking_id, resource_type, resource_id, \"window\") "
            "SELECT %s, %s, 'table', gen_random_uuid(), tstzrange(now() + make_interval(years => 40, hours => n), "
            "now() + make_interval(years => 40, hours => n + 1)) FROM generate_series(1, 3) AS n RETURNING id::text",
            (restaurant, booking)).fetchall()]
        app.execute("UPDATE allocations SET \"window\" = tstzrange(lower(\"window\") + interval '1 minute', "
                    "upper(\"window\") + interval '1 minute') WHERE id = %s", (kept[0],))
        app.execute("DELETE FROM allocations WHERE id = (SELECT id FROM allocations ORDER BY id DESC LIMIT 1)")
        app.commit()
    return kept


def live_rows(db_: Database) -> set[tuple[Any, ...]]:
    with db_.connect() as conn:
        return set(conn.execute("SELECT a.* FROM public.allocations a").fetchall())


def assert_window_in_step(db_: Database) -> None:
    """Once the change log is replayed, the previous table holds exactly the live rows (the copy and the replay
    lost and resurrected none)."""
    with db_.connect(autocommit=True) as conn:
        changelog.replay_until(PsycopgSession(conn))
        missing, extra = conn.execute(
            "SELECT (SELECT count(*) FROM (SELECT * FROM public.allocations EXCEPT "
            "        SELECT * FROM reserve_swap.allocations) m), "
            "       (SELECT count(*) FROM (SELECT * FROM reserve_swap.allocations EXCEPT "
            "        SELECT * FROM public.allocations) e)").fetchone()
    assert (missing, extra) == (0, 0)


def rerun(db_: Database, *args: str) -> str:
    code, output = faults.run_alembic(db_.url, *ONLINE, *args)
    assert code == 0, output
    return output


# ---------------------------------------------------------------- moments to hit


def wait_for_backfill(dba: psycopg.Connection[Any], proc: Any, rows: int = ROWS // 4) -> None:
    """Until the backfill has committed at least ``rows`` rows (and not all of them)."""
    def copied() -> bool:
        found = swap_state.read(dba)
        return found is not None and found.phase == swap_state.BUILDING and found.rows_copied >= rows
    faults.wait_until(copied, f"the backfill to copy {rows} rows", procs=[proc])


# ---------------------------------------------------------------- the build


def test_terminated_while_the_build_waits_for_its_lock_leaves_nothing_and_a_rerun_reaches_head(below_swap):
    before = live_rows(below_swap)
    code, output = faults.terminated_while_waiting(below_swap.url, ("allocations", "ROW EXCLUSIVE"),
                                                   "SHARE ROW EXCLUSIVE MODE", *ONLINE, *WAIT_FOR_BLOCKER, "upgrade", "head")
    assert code != 0 and "terminating connection due to administrator command" in output, output
    assert swap_found(below_swap) is None  # the build is one transaction: nothing of it stays
    assert_at(below_swap, BELOW_SWAP, window=False)
    assert live_rows(below_swap) == before
    rerun(below_swap, "upgrade", "head")
    assert_at(below_swap, HEAD, window=True)
    assert live_rows(below_swap) == before


def test_statement_timeout_while_the_build_waits_for_its_lock_leaves_nothing(below_swap):
    with faults.holding_lock(below_swap.url, "allocations", "ROW EXCLUSIVE"):
        code, output = faults.run_alembic(below_swap.url, *ONLINE, *WAIT_FOR_BLOCKER, "-x", "statement_timeout=1s",
                                          "upgrade", "head")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    assert swap_found(below_swap) is None
    assert_at(below_swap, BELOW_SWAP, window=False)


# ---------------------------------------------------------------- the backfill, half done


def _interrupted_backfill(db_: Database, fault: str) -> swap_state.SwapState:
    with db_.connect(autocommit=True) as dba:
        proc = faults.start_alembic(db_.url, *ONLINE, *SLOW_BACKFILL, "upgrade", "head")
        wait_for_backfill(dba, proc)
        backend = faults.migration_backends(dba)[0]
        if fault == "terminate":
            assert faults.terminate(dba, backend.pid)
            code, output = faults.finish(proc, db_.url)
            assert code != 0 and "terminating connection due to administrator command" in output, output
        else:
            faults.kill_client(proc)
            proc.wait(timeout=10)
            faults.wait_gone(dba, backend.pid)
    found = swap_found(db_)
    assert found is not None and found.phase == swap_state.BUILDING and 0 < found.rows_copied < ROWS, found
    return found


def _resumes_and_keeps_every_write(db_: Database, found: swap_state.SwapState) -> None:
    data = assert_named_by_verify(db_, "alembic upgrade head")
    assert data["alternative"] == "reserve swap abort"
    kept = assert_application_writes_go_through(db_)
    expected = live_rows(db_)
    output = rerun(db_, "upgrade", "head")
    resumed = RESUMED.search(output)
    assert resumed and int(resumed.group(1)) >= found.rows_copied, output  # not from zero
    assert_at(db_, HEAD, window=True)
    assert live_rows(db_) == expected
    assert {row[0] for row in expected} >= {uuid.UUID(i) for i in kept}
    assert_window_in_step(db_)


def test_terminated_with_the_backfill_half_done_a_rerun_resumes_from_the_last_batch(below_swap):
    found = _interrupted_backfill(below_swap, "terminate")
    _resumes_and_keeps_every_write(below_swap, found)


def test_client_killed_with_the_backfill_half_done_a_rerun_resumes_from_the_last_batch(below_swap):
    found = _interrupted_backfill(below_swap, "kill")
    _resumes_and_keeps_every_write(below_swap, found)


def test_statement_timeout_in_a_backfill_batch_stops_it_and_a_rerun_resumes(below_swap):
    # The copy takes no row locks (the change log keeps what it races with), so a batch waits only on the
    # shadow itself: once half the rows are copied, a session takes SHARE on it and the next batch's insert
    # waits until its statement times out.
    with below_swap.connect(autocommit=True) as dba:
        proc = faults.start_alembic(below_swap.url, *ONLINE, *SLOW_BACKFILL, "-x", "statement_timeout=1s",
                                    "-x", "lock_timeout=30s", "upgrade", "head")
        wait_for_backfill(dba, proc)
        with faults.holding_lock(below_swap.url, swap_state.SHADOW, "SHARE"):
            code, output = faults.finish(proc, below_swap.url)
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    found = swap_found(below_swap)
    assert found is not None and found.phase == swap_state.BUILDING and 0 < found.rows_copied < ROWS, found
    _resumes_and_keeps_every_write(below_swap, found)


def test_statement_timeout_in_the_guard_build_keeps_the_copy_and_a_rerun_builds_it_without_copying_again(below_swap):
    """The guard is the longest statement of the backfill (one bulk build on the filled shadow): a statement_timeout
    shorter than it rolls back the build alone; the copy and the key stay, and the rerun goes on from there."""
    # Small batches (each a few ms even on a loaded machine), a timeout well under the guard's build (~1.5 s here).
    code, output = faults.run_alembic(below_swap.url, *ONLINE, "-x", "swap_batch_rows=2000", "-x",
                                      "statement_timeout=500ms", "upgrade", "head")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    found = swap_found(below_swap)
    assert found is not None and found.phase == swap_state.BUILDING and found.copied_at is not None, found
    with below_swap.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'reserve_swap.allocations'::regclass "
                            "AND contype = 'x'").fetchone()[0] == 0  # the guard's build rolled back whole
    assert_named_by_verify(below_swap, "alembic upgrade head")
    assert_application_writes_go_through(below_swap)
    before = live_rows(below_swap)
    output = rerun(below_swap, "upgrade", "head")
    assert "copy done" not in output and "resuming the copy" not in output, output
    assert_at(below_swap, HEAD, window=True)
    assert live_rows(below_swap) == before  # the rows written while it was stopped included
    assert_window_in_step(below_swap)


# ---------------------------------------------------------------- the exchange: waiting, and holding the table


def _backfilled_then_waiting(db_: Database, blocker_table: str, fault: str, *extra: str) -> tuple[int, str]:
    """Run the upgrade while a reader holds ``blocker_table``: the build and the backfill go on, the exchange
    waits; then the fault."""
    with faults.holding_lock(db_.url, blocker_table, "ACCESS SHARE"), db_.connect(autocommit=True) as dba:
        proc = faults.start_alembic(db_.url, *ONLINE, *WAIT_FOR_BLOCKER, *extra, "upgrade", "head")
        backend = faults.wait_for_exchange_lock(dba, proc)
        if fault == "terminate":
            assert faults.terminate(dba, backend.pid)
            return faults.finish(proc, db_.url)
        faults.kill_client(proc)
        proc.wait(timeout=10)
    with db_.connect(autocommit=True) as dba:  # the blocker has gone: the orphan gets its lock, then ends
        faults.wait_gone(dba, backend.pid)
    return -9, ""


def _resumes_without_copying_again(db_: Database) -> None:
    found = swap_found(db_)
    assert found is not None and found.phase == swap_state.BACKFILLED, found
    assert_named_by_verify(db_, "alembic upgrade head")
    assert_application_writes_go_through(db_)
    expected = live_rows(db_)
    output = rerun(db_, "upgrade", "head")
    assert "backfill" not in output.split("Running upgrade", 1)[1].lower().replace("backfilled", ""), output
    assert_at(db_, HEAD, window=True)
    assert live_rows(db_) == expected
    assert_window_in_step(db_)


def test_terminated_while_the_exchange_waits_for_allocations_keeps_the_copy(below_swap):
    code, output = _backfilled_then_waiting(below_swap, "allocations", "terminate")
    assert code != 0 and "terminating connection due to administrator command" in output, output
    _resumes_without_copying_again(below_swap)


def test_client_killed_while_the_exchange_waits_keeps_the_copy(below_swap):
    _backfilled_then_waiting(below_swap, "allocations", "kill")
    _resumes_without_copying_again(below_swap)


def test_statement_timeout_while_the_exchange_waits_keeps_the_copy(below_swap):
    with faults.holding_lock(below_swap.url, "allocations", "ACCESS SHARE"):
        # Longer than the guard's build, even with the suite's other worker on the same cores.
        code, output = faults.run_alembic(below_swap.url, *ONLINE, *WAIT_FOR_BLOCKER, "-x", "statement_timeout=8s",
                                          "upgrade", "head")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    assert "LOCK TABLE public.booking_assignment_idempotency" in output.split("statement timeout", 1)[1], output
    _resumes_without_copying_again(below_swap)


def test_terminated_while_the_exchange_holds_allocations_rolls_the_exchange_back_whole(below_swap):
    with below_swap.connect(autocommit=True) as dba, below_swap.connect() as first, below_swap.connect() as gate:
        proc = faults.stop_the_exchange_at_the_queue(below_swap, dba, first, gate)
        assert faults.terminate(dba, faults.migration_backends(dba)[0].pid)
        code, output = faults.finish(proc, below_swap.url)
        gate.rollback()
    assert code != 0 and "terminating connection due to administrator command" in output, output
    assert swap_found(below_swap).phase == swap_state.BACKFILLED  # the live table is still the old one
    _resumes_without_copying_again(below_swap)


# ---------------------------------------------------------------- the foreign keys' validation


def _stopped_in_validation(db_: Database, fault: str) -> tuple[int, str]:
    """The exchange commits; a session queued behind it on booking_table_assignments is granted SHARE right
    after, and the validation of that table's re-pointed foreign key waits for it: the fault comes there."""
    table = "public.booking_table_assignments"
    extra = ["-x", "statement_timeout=8s"] if fault == "statement_timeout" else []
    with db_.connect(autocommit=True) as dba, db_.connect() as first, db_.connect() as gate:
        proc = faults.stop_the_exchange_at_the_queue(db_, dba, first, gate, *extra)
        with faults.queued_behind_the_exchange(db_.url, table, "SHARE") as granted:
            faults.wait_until(lambda: faults.lock_waiters(dba, table) > 0, "a session to queue behind the exchange",
                              procs=[proc])
            gate.rollback()  # the exchange updates the state row and commits
            assert granted.wait(30)
            backend = faults.wait_for_backend(dba, query_contains="SHARE UPDATE EXCLUSIVE MODE", waiting_on_lock=True,
                                              proc=proc)
            assert swap_found(db_).phase == swap_state.SWAPPED
            if fault == "terminate":
                assert faults.terminate(dba, backend.pid)
                return faults.finish(proc, db_.url)
            if fault == "statement_timeout":
                return faults.finish(proc, db_.url)
            faults.kill_client(proc)
            proc.wait(timeout=10)
        faults.wait_gone(dba, backend.pid)
        return -9, ""


def _validation_resumed(db_: Database) -> None:
    found = swap_found(db_)
    assert found is not None and found.phase == swap_state.SWAPPED
    data = assert_named_by_verify(db_, "alembic upgrade head")
    assert "validating the re-pointed foreign keys" in data["left"]
    with db_.connect() as conn:  # the new guard is in force, the old table is kept in step already
        assert expectations.differences(HEAD, expectations.without_machinery(
            catalog.snapshot(conn))) != []  # a foreign key is still NOT VALID
    assert_application_writes_go_through(db_)
    expected = live_rows(db_)
    output = rerun(db_, "upgrade", "head")
    assert "VALIDATE" in output or "validating" in output, output
    assert_at(db_, HEAD, window=True)
    assert live_rows(db_) == expected
    assert_window_in_step(db_)


def test_terminated_while_validating_the_repointed_foreign_keys_a_rerun_validates_them(below_swap):
    code, output = _stopped_in_validation(below_swap, "terminate")
    assert code != 0 and "terminating connection due to administrator command" in output, output
    _validation_resumed(below_swap)


def test_statement_timeout_while_validating_the_repointed_foreign_keys_a_rerun_validates_them(below_swap):
    code, output = _stopped_in_validation(below_swap, "statement_timeout")
    assert code != 0 and "canceling statement due to statement timeout" in output, output
    _validation_resumed(below_swap)


def test_client_killed_while_validating_the_repointed_foreign_keys_a_rerun_validates_them(below_swap):
    _stopped_in_validation(below_swap, "kill")
    _validation_resumed(below_swap)


# ---------------------------------------------------------------- two runners at once


def test_two_online_upgrades_at_once_one_swaps_and_the_other_finds_head(below_swap):
    before = live_rows(below_swap)
    with below_swap.connect(autocommit=True) as dba:
        runs = faults.start_two_runs(dba, below_swap.url, *ONLINE, *SLOW_BACKFILL, "upgrade", "head")
        results = [faults.finish(run, below_swap.url) for run in runs]
    faults.assert_one_ran_and_the_other_waited(results, f"Running upgrade {BELOW_SWAP} -> {HEAD}")
    assert_at(below_swap, HEAD, window=True)
    assert live_rows(below_swap) == before


# ---------------------------------------------------------------- the rollback: in the window, and after it


@pytest.mark.parametrize("fault", ["terminate", "kill", "statement_timeout"])
def test_a_fault_while_the_exchange_back_waits_stays_at_head_with_the_window_open(in_window, fault: str):
    """The rollback inside the window, waiting behind a reader of allocations, is terminated, its client SIGKILLed,
    or its lock wait cut by statement_timeout: the window is whole and in step, and a rerun exchanges back."""
    extra = ["-x", "statement_timeout=5s"] if fault == "statement_timeout" else []
    with faults.holding_lock(in_window.url, "allocations", "ACCESS SHARE"), \
            in_window.connect(autocommit=True) as dba:
        proc = faults.start_alembic(in_window.url, *ONLINE, *WAIT_FOR_BLOCKER, *extra, "downgrade", "-1")
        backend = faults.wait_for_exchange_lock(dba, proc)
        if fault == "terminate":
            assert faults.terminate(dba, backend.pid)
        elif fault == "kill":
            faults.kill_client(proc)
        code, output = faults.finish(proc, in_window.url)
    assert code != 0, output
    if fault == "statement_timeout":
        assert "canceling statement due to statement timeout" in output, output
    with in_window.connect(autocommit=True) as dba:
        faults.wait_gone(dba, backend.pid)  # a SIGKILLed client's backend ends once its lock wait does
    assert_at(in_window, HEAD, window=True)
    assert_application_writes_go_through(in_window)
    assert_window_in_step(in_window)
    expected = live_rows(in_window)
    rerun(in_window, "downgrade", "-1")
    assert_at(in_window, BELOW_SWAP, window=False)
    assert live_rows(in_window) == expected
    assert swap_found(in_window) is None


def test_the_online_rebuild_interrupted_half_done_is_named_and_a_rerun_resumes(at_head):
    with at_head.connect(autocommit=True) as dba:
        proc = faults.start_alembic(at_head.url, *ONLINE, *SLOW_BACKFILL, "downgrade", "-1")
        wait_for_backfill(dba, proc)
        assert faults.terminate(dba, faults.migration_backends(dba)[0].pid)
        code, output = faults.finish(proc, at_head.url)
    assert code != 0, output
    found = swap_found(at_head)
    assert found is not None and found.direction == "downgrade" and found.phase == swap_state.BUILDING
    assert_named_by_verify(at_head, "alembic downgrade -1")
    assert_application_writes_go_through(at_head)
    expected = live_rows(at_head)
    output = rerun(at_head, "downgrade", "-1")
    assert RESUMED.search(output), output
    assert_at(at_head, BELOW_SWAP, window=False)
    assert live_rows(at_head) == expected


def test_a_rollback_that_cannot_drop_the_table_it_replaced_retires_it_and_finish_drops_it(in_window):
    """Dropping the table that left removes its foreign keys: ACCESS EXCLUSIVE on bookings for an instant, which
    a long report on bookings holds off. The rollback does not wait for it: the table is emptied, verify says so,
    and `reserve swap finish` (or the next run of any revision) drops it."""
    with in_window.connect() as report:
        report.execute("SELECT count(*) FROM bookings")  # ACCESS SHARE on bookings until rollback
        output = rerun(in_window, "-x", "swap_lock_timeout=300ms", "downgrade", "-1")
        report.rollback()
    assert "emptied" in output, output
    found = swap_found(in_window)
    assert found is not None and found.phase == swap_state.RETIRED
    report_ = verify(in_window.url)
    statuses = {c.name: c.status for c in report_.checks}
    # What this test is about: a named, accepted state below the swap (the probe's plan is the planner's call).
    assert statuses["retired table"] == "warn", report_.to_text()
    assert {statuses[name] for name in ("catalog", "overlaps")} == {"ok"}, report_.to_text()
    assert_at(in_window, BELOW_SWAP, window=False)
    assert_application_writes_go_through(in_window)
    with in_window.connect() as conn:
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == 0

    rerun(in_window, "upgrade", "head")  # the next run drops it first, then swaps
    assert_at(in_window, HEAD, window=True)
