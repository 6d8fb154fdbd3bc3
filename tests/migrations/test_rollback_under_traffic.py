"""The emergency rollback on a busy database: `alembic downgrade -1` restores the old guard promptly while
reports, REPEATABLE READ transactions and autovacuum run (the online exchange back inside the window, the locked
method; the online rebuild after the window waits for snapshots older than its copy, bounded, then refuses),
and `reserve preflight --target -1` names what it can never avoid waiting for (a transaction holding a lock on
allocations, such as pg_dump).

Alembic runs as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from bench.rollback_under_traffic import snapshot_holding_report
from reserve import db
from reserve.cli import main
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import EphemeralPostgres, find_bindir
from reserve.schema import catalog, guards, locks, revisions
from tests import faults
from tests.datasets import LOCKED_CLI
from tests.support import REVISIONS, Database, wait_until

pytestmark = pytest.mark.slow  # `make test-slow`: a long report and a REPEATABLE READ transaction held through a rollback

HEAD, BELOW_SWAP = REVISIONS[-1], REVISIONS[-2]
SMALL = dataset.Shape(restaurants=4, tables_per_restaurant=10, windows_per_table=20)
PROMPTLY_S = 30  # "well under a minute": the guard is back long before the report ends


def _with_data(db_: Database) -> None:
    with db_.connect(autocommit=True) as conn:
        dataset.generate(conn, SMALL)


def _old_guard_back(conn: psycopg.Connection[Any]) -> bool:
    return guards.is_in_place(conn, guards.OLD_GUARD)


def test_the_exchange_back_in_the_window_ends_while_a_report_and_a_repeatable_read_transaction_go_on(
        head_db: Database):
    """The exchange back waits for no snapshot: both began after the upgrade's exchange, and the previous table
    holds every row they can see."""
    _with_data(head_db)
    with snapshot_holding_report(head_db.url, 120) as (_, report_done), head_db.connect() as snapshot_holder:
        snapshot_holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot_holder.execute("SELECT count(*) FROM restaurants")
        code, output = faults.run_alembic(head_db.url, "downgrade", "-1", timeout_s=PROMPTLY_S)
        assert not report_done.is_set(), "the report ended first: nothing showed the rollback did not wait for it"
        snapshot_holder.rollback()
    assert code == 0, output
    with head_db.connect() as conn:
        assert faults.boundary(conn).at == BELOW_SWAP


def test_the_online_rebuild_refuses_to_exchange_under_a_snapshot_older_than_its_copy_and_a_rerun_completes(
        head_db: Database):
    """After the window, the online rollback copies into a new table: a transaction whose snapshot predates the
    copy would see allocations empty after the exchange. It waits for it (-x swap_snapshot_wait), then refuses
    naming it, the live table untouched; once it ends, a rerun exchanges. (The emergency path past a long report
    is the locked rollback, below.)"""
    _with_data(head_db)
    head_db.close_window()
    online = ["-x", "swap_method=online"]
    with head_db.connect() as snapshot_holder:
        snapshot_holder.execute("SET application_name = 'finance-export'")
        snapshot_holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        seen = snapshot_holder.execute("SELECT count(*) FROM allocations").fetchone()[0]
        code, output = faults.run_alembic(head_db.url, *online, "-x", "swap_snapshot_wait=1", "downgrade", "-1",
                                          timeout_s=PROMPTLY_S * 4)
        assert snapshot_holder.execute("SELECT count(*) FROM allocations").fetchone()[0] == seen
        pid = snapshot_holder.info.backend_pid
        snapshot_holder.rollback()
    assert code != 0 and f"pid {pid} (finance-export" in output and "Nothing was changed" in output, output
    with head_db.connect() as conn:
        assert faults.boundary(conn).recorded == HEAD and guards.is_in_place(conn, guards.NEW_GUARD)
    code, output = faults.run_alembic(head_db.url, *online, "downgrade", "-1", timeout_s=PROMPTLY_S * 4)
    assert code == 0, output
    with head_db.connect() as conn:
        assert faults.boundary(conn).at == BELOW_SWAP


def test_the_locked_rollback_restores_the_guard_promptly_while_a_report_and_a_repeatable_read_transaction_run(
        head_db: Database):
    _with_data(head_db)
    head_db.close_window()
    with snapshot_holding_report(head_db.url, 120) as (report_pid, report_done), head_db.connect() as snapshot_holder, \
            head_db.connect(autocommit=True) as dba:
        snapshot_holder.execute("SET application_name = 'finance-export'")
        snapshot_holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot_holder.execute("SELECT count(*) FROM restaurants")
        proc = faults.start_alembic(head_db.url, *LOCKED_CLI, "downgrade", "-1")
        restored_after = wait_until(lambda: _old_guard_back(dba), "the old guard to be restored", procs=[proc])
        assert restored_after < PROMPTLY_S

        # Then the redundant index build waits for both of them, and blocks nobody meanwhile.
        faults.wait_for_backend(dba, query_contains="CREATE INDEX CONCURRENTLY", waiting_on_lock=True, proc=proc)
        with head_db.connect() as writer:
            writer.execute("SET statement_timeout = '5s'")
            restaurant, resource = writer.execute(
                "SELECT restaurant_id, gen_random_uuid() FROM allocations LIMIT 1").fetchone()
            writer.execute("INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                           "VALUES (%s, 'table', %s, tstzrange(now(), now() + interval '1 hour'))", (restaurant, resource))
            writer.commit()
        assert proc.poll() is None, "the rollback ended while the report was still running"
        assert not report_done.is_set()

        snapshot_holder.rollback()
        dba.execute("SELECT pg_cancel_backend(%s)", (report_pid,))
        code, output = faults.finish(proc, head_db.url)
    assert code == 0, output
    # The run says the guard was back before the index build (which waited for the report) began.
    assert "allocations_resource_window_excl is restored; building index" in output, output
    with head_db.connect() as conn:
        assert faults.boundary(conn).at == BELOW_SWAP


def test_the_rollback_does_not_wait_for_autovacuum():
    """Autovacuum holds SHARE UPDATE EXCLUSIVE on the table it cleans; PostgreSQL cancels it for a waiting lock
    after deadlock_timeout, so the rollback's bounded lock attempt gets through. A server of its own, with
    autovacuum waking every second, and allocations vacuumed as slowly as PostgreSQL allows."""
    with EphemeralPostgres(settings={"autovacuum_naptime": "1s"}) as server:
        url = server.url()
        alembic_runner.upgrade(url, "head")
        with db.connect(url, autocommit=True) as conn:
            dataset.generate(conn, SMALL)
            conn.execute("ALTER TABLE allocations SET (autovacuum_vacuum_threshold = 0, "
                         "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
                         "autovacuum_vacuum_cost_limit = 1)")
            conn.execute("DELETE FROM allocations WHERE id IN (SELECT id FROM allocations ORDER BY id LIMIT 500)")
            vacuuming = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' " \
                        "AND datname = current_database() AND query LIKE '%allocations%'"
            wait_until(lambda: conn.execute(vacuuming).fetchone()[0] > 0, "autovacuum to work on allocations")
            started = time.monotonic()
            done = alembic_runner.run_cli(url, "downgrade", "-1", timeout=120)
            took = time.monotonic() - started
            assert done.returncode == 0, db.scrub(done.stdout + done.stderr, url)
            assert took < PROMPTLY_S
            assert guards.is_in_place(conn, guards.OLD_GUARD)
            assert revisions.current_revision(conn) == BELOW_SWAP


def test_preflight_for_the_rollback_names_a_running_pg_dump_by_pid_and_application(head_db: Database):
    """pg_dump holds ACCESS SHARE on every table it dumps until it ends: the one wait no rollback can avoid."""
    with head_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE public.zz_dump_gate (n int)")  # dumped after allocations (created later)
    with head_db.connect() as blocker, head_db.connect(autocommit=True) as watcher:
        blocker.execute("LOCK TABLE zz_dump_gate IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, allocations locked
        url = head_db.url
        dump = subprocess.Popen(
            [str(find_bindir() / "pg_dump"), "-h", url.host, "-p", str(url.port), "-U", url.username, "-d",
             url.database, "-f", os.devnull],
            env={**os.environ, "PGPASSWORD": url.password or ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            def dumping() -> list[locks.Holder]:
                return [h for h in locks.holders(watcher, {guards.TABLE: "ACCESS EXCLUSIVE"})
                        if h.application == "pg_dump" and h.granted]
            wait_until(lambda: bool(dumping()), "pg_dump to lock allocations")
            dump_pid = dumping()[0].pid
            result = CliRunner().invoke(main, ["preflight", "--target", "-1", "--json"],
                                        env={"DATABASE_URL": url.render_as_string(hide_password=False)})
        finally:
            blocker.rollback()
            dump.wait(timeout=60)
    report = json.loads(result.output)
    check = next(c for c in report["checks"] if c["name"] == "lock holders")
    assert result.exit_code == 1 and check["status"] == "fail"
    assert {"pid": dump_pid, "application": "pg_dump", "mode": "ACCESS SHARE", "table": "public.allocations"}.items() \
        <= check["data"]["holders"][0].items()
    assert f"pid {dump_pid} (pg_dump) holds ACCESS SHARE on public.allocations" in check["detail"]


def test_a_locked_rollback_stopped_during_its_index_build_is_named_by_verify_and_finished_by_a_rerun(
        head_db: Database):
    _with_data(head_db)
    head_db.close_window()
    with head_db.connect() as snapshot_holder, head_db.connect(autocommit=True) as dba:
        snapshot_holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot_holder.execute("SELECT 1 FROM restaurants LIMIT 1")
        proc = faults.start_alembic(head_db.url, *LOCKED_CLI, "downgrade", "-1")
        faults.wait_for_backend(dba, query_contains="CREATE INDEX CONCURRENTLY", waiting_on_lock=True, proc=proc)
        faults.kill_client(proc)  # the operator's Ctrl-C would do the same; the deploy job's timeout does worse
        proc.wait(timeout=10)
        snapshot_holder.rollback()
    # The orphaned backend finishes its statement, finds its client gone and ends; then the state is stable.
    with head_db.connect(autocommit=True) as dba:
        wait_until(lambda: not faults.migration_backends(dba), "the orphaned backend to end")
    verified = CliRunner().invoke(main, ["verify", "--json"],
                                  env={"DATABASE_URL": head_db.url.render_as_string(hide_password=False)})
    check = next(c for c in json.loads(verified.output)["checks"] if c["name"] == "catalog")
    assert verified.exit_code == 1
    assert check["data"]["command"] == "alembic downgrade -1"
    assert "restored allocations_resource_window_excl" in check["detail"]

    code, output = faults.run_alembic(head_db.url, *LOCKED_CLI, "downgrade", "-1")
    assert code == 0, output
    with head_db.connect() as conn:
        assert faults.boundary(conn).at == BELOW_SWAP and catalog.pending_indexes(conn) == []
