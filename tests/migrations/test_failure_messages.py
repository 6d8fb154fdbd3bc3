"""One clear message per operational failure: `alembic` (through env.py) and `reserve` print one line naming the
step or command, the kind of failure, the table and who was in the way, never a traceback, and exit non-zero.
Each failure kind is provoked for real on the test server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from reserve import db
from tests import faults
from tests.support import REVISIONS, ROOT, Database

BELOW_SWAP = REVISIONS[-2]
RESERVE = str(Path(sys.executable).parent / "reserve")  # the console script, as installed


def failed_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAILED:")]


def assert_one_message(code: int, output: str) -> str:
    lines = failed_lines(output)
    assert code != 0 and len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def test_a_lock_timeout_names_the_step_the_table_and_the_holder(baseline_db: Database):
    # The step's own locks are granted; the version update then waits for this one and gives up.
    with baseline_db.connect() as holder:
        holder.execute("SET application_name = 'version-auditor'")
        holder.execute("LOCK TABLE alembic_version IN EXCLUSIVE MODE")
        code, output = faults.run_alembic(baseline_db.url, "-x", "lock_timeout=300ms", "upgrade", "0002_confirmation_results")
        pid = holder.info.backend_pid
        holder.rollback()
    line = assert_one_message(code, output)
    assert line.startswith("FAILED: upgrade 0002_confirmation_results failed: lock timeout"), line
    assert "table: public.alembic_version" in line
    assert f"in the way: pid {pid} (version-auditor) holds EXCLUSIVE on public.alembic_version" in line
    assert "its transaction was rolled back: alembic_version names 0001_baseline" in line
    assert baseline_db.current() == "0001_baseline"


def plant_version_trigger(db_: Database, body: str) -> None:
    """A trigger on Alembic's version update: the one statement every step runs, whatever it changes."""
    with db_.connect() as conn:
        conn.execute(f"CREATE FUNCTION public.zz_on_version() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN {body} END$$")
        conn.execute("CREATE TRIGGER zz_on_version BEFORE UPDATE ON alembic_version FOR EACH ROW "
                     "EXECUTE FUNCTION zz_on_version()")
        conn.commit()


def test_a_statement_timeout_names_the_step_and_the_statement(baseline_db: Database):
    plant_version_trigger(baseline_db, "PERFORM pg_sleep(5); RETURN NEW;")
    code, output = faults.run_alembic(baseline_db.url, "-x", "statement_timeout=1s", "upgrade", "0002_confirmation_results")
    line = assert_one_message(code, output)
    assert "upgrade 0002_confirmation_results failed: statement timeout" in line, line
    assert "statement: UPDATE alembic_version" in line and "alembic_version names 0001_baseline" in line
    assert baseline_db.current() == "0001_baseline"


def test_refused_data_names_the_step_and_the_servers_reason(baseline_db: Database):
    plant_version_trigger(baseline_db, "RAISE EXCEPTION 'versions are frozen' USING ERRCODE = '23514';")
    code, output = faults.run_alembic(baseline_db.url, "upgrade", "0002_confirmation_results")
    line = assert_one_message(code, output)
    assert "upgrade 0002_confirmation_results failed: refused data: versions are frozen (SQLSTATE 23514)" in line
    assert baseline_db.current() == "0001_baseline"


def test_a_terminated_backend_is_a_lost_connection_with_one_message(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    # An open write transaction: the online swap's build waits for it (its triggers need SHARE ROW EXCLUSIVE).
    with faults.holding_lock(baseline_db.url, "allocations", "ROW EXCLUSIVE"), baseline_db.connect(autocommit=True) as dba:
        proc = faults.start_alembic(baseline_db.url, "-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1",
                                    "upgrade", "head")
        backend = faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True,
                                          proc=proc)
        faults.terminate(dba, backend.pid)
        code, output = faults.finish(proc, baseline_db.url)
    line = assert_one_message(code, output)
    assert "upgrade 0004_allocations_no_overlap failed: connection lost: terminating connection" in line, line
    assert f"alembic_version names {BELOW_SWAP}" in line


def test_ctrl_c_during_a_wait_is_one_message_and_changes_nothing(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    before = baseline_db.snapshot()
    with faults.holding_lock(baseline_db.url, "allocations", "ROW EXCLUSIVE"), baseline_db.connect(autocommit=True) as dba:
        proc = faults.start_alembic(baseline_db.url, "-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1",
                                    "upgrade", "head")
        faults.wait_for_backend(dba, query_contains="LOCK TABLE public.allocations", waiting_on_lock=True, proc=proc)
        os.kill(proc.pid, signal.SIGINT)
        code, output = faults.finish(proc, baseline_db.url)
    line = assert_one_message(code, output)
    assert "upgrade 0004_allocations_no_overlap interrupted (Ctrl-C)" in line, line
    assert baseline_db.current() == BELOW_SWAP
    assert baseline_db.snapshot() == before


# ---------------------------------------------------------------- reserve commands


def reserve(db_: Database, *args: str, pgoptions: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, db.ENV_VAR: db_.url.render_as_string(hide_password=False), "PGOPTIONS": pgoptions}
    return subprocess.run([RESERVE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_reserve_command_that_waits_too_long_for_a_lock_names_the_holder_and_exits_1(head_db: Database):
    with head_db.connect() as holder:
        holder.execute("SET application_name = 'flag-migration'")
        holder.execute("LOCK TABLE feature_flag_overrides IN ACCESS EXCLUSIVE MODE")
        result = reserve(head_db, "flags", "set", "pairwise", pgoptions="-c lock_timeout=300ms")
        pid = holder.info.backend_pid
        holder.rollback()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("error: reserve flags set failed: lock timeout"), errors[0]
    assert f"pid {pid} (flag-migration) holds ACCESS EXCLUSIVE on public.feature_flag_overrides" in errors[0]
    assert head_db.url.password not in result.stdout + result.stderr


def test_a_reserve_command_whose_backend_is_terminated_exits_2_with_one_message(head_db: Database):
    with head_db.connect() as holder, head_db.connect(autocommit=True) as dba:
        holder.execute("LOCK TABLE feature_flag_overrides IN ACCESS EXCLUSIVE MODE")
        env = {**os.environ, db.ENV_VAR: head_db.url.render_as_string(hide_password=False), "PGOPTIONS": ""}
        proc = subprocess.Popen([RESERVE, "flags", "list"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        waiting: list[int] = []
        while not waiting and time.monotonic() < deadline and proc.poll() is None:
            waiting = [row[0] for row in dba.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'reserve' "
                "AND wait_event_type = 'Lock'")]
            time.sleep(0.05)
        assert waiting, "the command never waited for the lock"
        dba.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
        _, stderr = proc.communicate(timeout=60)
        holder.rollback()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "reserve flags list failed: connection lost" in errors[0], errors[0]
