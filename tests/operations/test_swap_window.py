"""reserve swap status|finish|abort: the online upgrade's window seen and closed deliberately, and verify's word
on both states at head. Interrupted, `finish` changes nothing, and a rerun completes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from reserve.cli import main
from reserve.operations import swap_window
from reserve.rollout.lockwatch import reported_holds
from reserve.rollout.verify import verify
from reserve.schema import catalog, expectations, locks
from reserve.schema.swap import state as swap_state
from reserve.schema.swap import teardown
from tests import faults, swapping
from tests.support import REVISIONS, Database, reserve_cli, slot


def swap(db_: Database, *args: str):
    return reserve_cli(db_.url, "swap", *args, "--json")


def checks(result) -> dict[str, dict]:
    return checks_of(json.loads(result.output))


def checks_of(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_status_in_the_window_says_the_rollback_is_instant_and_what_the_window_costs(head_db: Database):
    a, _ = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        for n in range(5):
            swapping.insert(conn, a.id, a.tables[n % 3], slot(2 + 3 * n))
        conn.commit()
    logged = json.loads(swap(head_db, "status", "--probe-writes", "0").output)
    assert logged["facts"]["log_rows"] == 5 and logged["facts"]["rows_written_to_the_standby"] == 0
    assert "5 write(s) logged and not yet replayed" in checks_of(logged)["instant rollback"]["detail"]
    with head_db.connect(autocommit=True) as conn:
        swapping.replay(conn)  # what the replayer (pg_cron, or `reserve swap follow`) does
    result = swap(head_db, "status")
    facts = json.loads(result.output)["facts"]
    assert result.exit_code == 0
    assert checks(result)["instant rollback"]["status"] == "ok"
    assert facts["window"] == "open" and facts["instant_rollback"] is True
    assert facts["previous_table_guard"] == "allocations_resource_window_excl"
    assert facts["rows_written_to_the_standby"] >= 5 and facts["conflicts"] == 0 and facts["log_rows"] == 0
    assert facts["extra_disk_bytes"] > 0 and facts["window_age_s"] >= 0
    overhead = facts["capture_write_overhead"]
    assert overhead["writes"] == 200 and overhead["captured_ms_per_write"] > 0 and overhead["plain_ms_per_write"] > 0
    assert overhead["share_row_exclusive_held_ms"] > 0
    with head_db.connect() as conn:  # the probe's writes were rolled back
        assert conn.execute("SELECT count(*) FROM allocations").fetchone()[0] == 5


def test_status_names_the_rows_that_make_the_rollback_not_instant(head_db: Database):
    a, b = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        swapping.insert(conn, a.id, a.tables[0], slot(3))
        twin = swapping.insert(conn, b.id, a.tables[0], slot(3))  # legal now, not under the previous guard
        conn.commit()
    with head_db.connect(autocommit=True) as conn:
        swapping.replay(conn)  # the replayer records the twin as a conflict
    result = swap(head_db, "status", "--probe-writes", "0")
    check = checks(result)["instant rollback"]
    assert result.exit_code == 0 and check["status"] == "warn"
    assert check["data"]["conflicts"] == [str(twin)] and str(twin) in check["detail"]
    assert json.loads(result.output)["facts"]["instant_rollback"] is False
    verified = next(c for c in verify(head_db.url).checks if c.name == "swap window")
    assert verified.status == "warn" and str(twin) in verified.detail


def test_verify_accepts_both_states_at_head_and_says_which_it_found(head_db: Database):
    in_window = verify(head_db.url)
    assert in_window.exit_code == 0
    assert next(c for c in in_window.checks if c.name == "swap window").status == "ok"
    result = swap(head_db, "finish")
    assert result.exit_code == 0 and checks(result)["finish"]["status"] == "ok"
    closed = verify(head_db.url)
    assert closed.exit_code == 0 and not any(c.name == "swap window" for c in closed.checks)
    with head_db.connect() as conn:
        assert catalog.as_text(catalog.snapshot(conn)) == catalog.as_text(expectations.expected(REVISIONS[-1]))
        assert swap_state.read(conn) is None


def test_finish_twice_is_a_warning_the_second_time_and_changes_nothing(head_db: Database):
    assert swap(head_db, "finish").exit_code == 0
    before = head_db.snapshot()
    again = swap(head_db, "finish")
    assert again.exit_code == 0 and checks(again)["finish"]["status"] == "warn"
    assert "nothing to finish" in checks(again)["finish"]["detail"]
    assert head_db.snapshot() == before


def test_finish_below_head_is_refused(pre_swap_db: Database):
    result = swap(pre_swap_db, "finish")
    assert result.exit_code == 1 and "below head" in checks(result)["finish"]["detail"]


def test_finish_and_abort_refuse_a_swap_still_in_flight_and_abort_drops_it(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    before = expectations.without_machinery(pre_swap_db.snapshot())
    refused = swap(pre_swap_db, "finish")
    assert refused.exit_code == 1 and "still in flight" in checks(refused)["finish"]["detail"]
    aborted = swap(pre_swap_db, "abort")
    assert aborted.exit_code == 0, aborted.output
    assert pre_swap_db.snapshot() == before  # machinery gone, live table as it was
    assert expectations.differences(REVISIONS[-2], pre_swap_db.snapshot()) == []


def test_abort_after_the_exchange_is_refused(head_db: Database):
    result = swap(head_db, "abort")
    assert result.exit_code == 1 and "reserve swap finish" in checks(result)["abort"]["detail"]


def _finish_terminated_while_it_waits(db_: Database, table: str) -> None:
    with faults.holding_lock(db_.url, table, "ACCESS SHARE"), db_.connect(autocommit=True) as dba:
        env = {"DATABASE_URL": db_.url.render_as_string(hide_password=False)}
        runner = swapping.InThread(lambda: CliRunner().invoke(main, ["swap", "finish", "--json"], env=env))
        swapping.wait_until(lambda: any(b.wait_event_type == "Lock" for b in _reserve_backends(dba)),
                            f"finish to wait for its lock on {table}")
        assert faults.terminate(dba, _reserve_backends(dba)[0].pid)
        assert runner.result().exit_code != 0


def test_finish_interrupted_before_the_mirror_is_detached_leaves_the_window_whole(head_db: Database):
    """finish first detaches the mirror, under a short lock on allocations: terminated while it waits for it
    (a report reads allocations), nothing has changed; the window is in step and the rollback still instant."""
    _finish_terminated_while_it_waits(head_db, "allocations")
    with head_db.connect() as conn:
        assert faults.boundary(conn).window_open
        assert expectations.differences(REVISIONS[-1], catalog.snapshot(conn)) == []
    assert swap(head_db, "finish").exit_code == 0
    with head_db.connect() as conn:
        assert swap_state.read(conn) is None


def test_finish_interrupted_after_the_mirror_is_detached_is_named_by_verify_and_a_rerun_drops_it(head_db: Database):
    """The previous table is emptied before it is dropped, so that the drop holds bookings and restaurants for
    catalog work only: terminated while that drop waits (a report reads bookings), the previous table is detached
    (not retired: no rollback left it), empty and out of step; verify names it, the rollback is a rebuild, and a
    rerun of finish drops it."""
    _finish_terminated_while_it_waits(head_db, "bookings")
    with head_db.connect() as conn:
        found = swap_state.read(conn)
        assert found is not None and found.phase == swap_state.DETACHED
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == 0
        assert expectations.differences(REVISIONS[-1], catalog.snapshot(conn)) == []
    retired = next(c for c in verify(head_db.url).checks if c.name == "retired table")
    assert retired.status == "warn" and "interrupted `reserve swap finish`" in retired.detail
    assert json.loads(swap(head_db, "status").output)["facts"]["instant_rollback"] is False
    assert swap(head_db, "finish").exit_code == 0
    with head_db.connect() as conn:
        assert swap_state.read(conn) is None


def _reserve_backends(dba) -> list:
    rows = dba.execute("SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'reserve' "
                       "AND state = 'active' AND query LIKE 'LOCK TABLE%%'").fetchall()
    return [faults.Backend(*row) for row in rows]


def test_finish_holds_allocations_only_to_detach_the_capture_and_drops_the_previous_table_emptied(head_db: Database):
    """Dropping a table holds its locks while its files go: finish empties the previous table first (under its own
    lock), so that neither allocations nor bookings wait for that."""
    with reported_holds() as reported:
        assert [c.status for c in swap_window.finish(head_db.url).checks] == ["ok"]
    steps = [(step, tables) for step, _, tables in reported.holds]
    assert steps == [("detaching the capture", "public.allocations"),
                     ("dropping the machinery", "public.bookings, public.restaurants")], steps


def test_status_names_every_phase_and_takes_no_lock_a_mover_would_wait_for(pre_swap_db: Database):
    """status reads the state row and moves nothing: it answers while another run holds the migration lock."""
    seen = {}
    with pre_swap_db.connect(autocommit=True) as conn, pre_swap_db.connect(autocommit=True) as mover:
        mover.execute("SELECT pg_advisory_lock(%s)", (locks.MIGRATION_LOCK_KEY,))
        steps = [("building", lambda: swapping.build(conn)), ("backfilled", lambda: swapping.backfill_rest(conn)),
                 ("open", lambda: (swapping.exchange_forward(conn), swapping.open_window(conn))),
                 ("detached", lambda: teardown.detach(swapping.session(conn), action="test finish"))]
        for name, step in steps:
            step()
            result = swap(pre_swap_db, "status", "--probe-writes", "0")
            seen[name] = (result.exit_code, json.loads(result.output)["facts"]["window"])
    assert seen == {name: (0, name) for name, _ in steps}


def test_finish_killed_while_it_waits_to_drop_the_previous_table_leaves_it_detached_and_a_rerun_drops_it(
        head_db: Database):
    """`reserve swap finish` as an operator runs it, SIGKILLed while its drop waits for a report on bookings: the
    server rolls the drop back when it notices; the previous table is detached and empty, and a rerun drops it."""
    env = {**os.environ, "DATABASE_URL": head_db.url.render_as_string(hide_password=False)}
    with faults.holding_lock(head_db.url, "bookings", "ACCESS SHARE"), head_db.connect(autocommit=True) as dba:
        proc = subprocess.Popen([sys.executable, "-c", "from reserve.cli import main; main()", "swap", "finish"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            swapping.wait_until(lambda: any(b.wait_event_type == "Lock" for b in _reserve_backends(dba)),
                                "finish to wait for bookings", procs=[proc])
            pid = _reserve_backends(dba)[0].pid
            faults.kill_client(proc)
            proc.communicate(timeout=30)
        finally:
            proc.kill()
    with head_db.connect(autocommit=True) as dba:
        faults.wait_gone(dba, pid)
    with head_db.connect() as conn:
        assert swap_state.read(conn).phase == swap_state.DETACHED
        assert conn.execute("SELECT count(*) FROM reserve_swap.allocations").fetchone()[0] == 0
    assert swap(head_db, "finish").exit_code == 0
    with head_db.connect() as conn:
        assert swap_state.read(conn) is None
