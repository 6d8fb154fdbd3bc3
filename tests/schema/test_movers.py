"""reserve.schema.movers: alembic and every `reserve swap` command that moves something take one lock, so that no
command acts on a reading of the swap's state another is making stale. Driven from several connections."""

from __future__ import annotations

import json
from typing import Any

from reserve.operations import swap_window
from reserve.rollout import alembic_runner
from reserve.schema import guards, locks
from reserve.schema.swap import state as swap_state
from tests import swapping
from tests.support import REVISIONS, Database, reserve_cli, slot

HOLDER = "deploy job: alembic downgrade -1"


def _swap(db_: Database, *args: str):
    return reserve_cli(db_.url, "swap", *args, "--json")


def _hold_migration_lock(conn) -> None:
    conn.execute(f"SET application_name = '{HOLDER}'")
    conn.execute("SELECT pg_advisory_lock(%s)", (locks.MIGRATION_LOCK_KEY,))


def test_finish_waits_for_a_run_holding_the_migration_lock_then_exits_1_naming_it_with_nothing_changed(
        head_db: Database):
    with head_db.connect(autocommit=True) as deploy:
        _hold_migration_lock(deploy)
        result = _swap(head_db, "finish", "--wait", "0.3")
        assert result.exit_code == 1
        detail = json.loads(result.output)["checks"][0]["detail"]
        assert f"pid {deploy.info.backend_pid} ({HOLDER}, connected since" in detail
        assert "nothing was changed" in detail
        with head_db.connect() as conn:
            assert swap_state.read(conn).phase == swap_state.WINDOW
    assert _swap(head_db, "finish").exit_code == 0  # released: the same command goes through


def test_abort_waits_for_a_run_holding_the_migration_lock_then_exits_1_naming_it(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    with pre_swap_db.connect(autocommit=True) as deploy:
        _hold_migration_lock(deploy)
        result = _swap(pre_swap_db, "abort", "--wait", "0.3")
        assert result.exit_code == 1 and f"pid {deploy.info.backend_pid} ({HOLDER}" in result.output
        with pre_swap_db.connect() as conn:
            assert swap_state.read(conn).phase == swap_state.BUILDING
    assert _swap(pre_swap_db, "abort").exit_code == 0


def _someone_waits(dba, condition: str) -> bool:
    return dba.execute(f"SELECT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
                       f"AND a.pid <> pg_backend_pid() AND {condition})").fetchone()[0]


def test_finish_racing_a_rollback_in_the_window_loses_no_allocation(head_db: Database):
    """The race that once emptied the live table: `reserve swap finish` is waiting to drop the previous table (a
    report holds bookings) when `alembic downgrade -1` starts. The rollback waits for finish's lock, then reads the
    state finish left (no window: a rebuild), and every allocation is there with the old guard in force."""
    a, b = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        ids = {swapping.insert(conn, venue.id, venue.tables[n], slot(3 + n)) for venue in (a, b) for n in range(2)}
        conn.commit()
    with head_db.connect() as report, head_db.connect(autocommit=True) as dba:
        report.execute("SELECT count(*) FROM bookings")  # a long report: finish's drop waits for it
        finishing = swapping.InThread(lambda: _swap(head_db, "finish", "--wait", "60"))
        swapping.wait_until(lambda: _someone_waits(dba, "a.wait_event_type = 'Lock' AND a.query LIKE 'LOCK TABLE%'"),
                            "finish to wait for bookings")
        rollback = alembic_runner.start_cli(head_db.url, "downgrade", "-1")
        try:
            swapping.wait_until(lambda: _someone_waits(
                dba, locks.WAITING_FOR_MIGRATION_LOCK_SQL.format(pid="a.pid")), "the rollback to wait for finish")
            report.commit()
            assert finishing.result(timeout_s=60).exit_code == 0
            output, _ = rollback.communicate(timeout=120)
        finally:
            rollback.kill()
        assert rollback.returncode == 0, output
    with head_db.connect() as conn:
        assert {row[0] for row in conn.execute("SELECT id FROM allocations")} == ids
        assert guards.is_in_place(conn, guards.OLD_GUARD)
        assert swap_state.read(conn) is None
    assert head_db.current() == REVISIONS[-2]


def _detail(report) -> str:
    return " ".join(check.detail for check in report.checks)


def _closing_twice(db_: Database, command: str, report_reads: str) -> tuple[Any, Any]:
    """Two `reserve swap <command>` at once, the first held up by a report on ``report_reads`` (its drop of the
    machinery waits): the second waits for the first's lock, then reads what the first left."""
    with db_.connect() as report, db_.connect(autocommit=True) as dba:
        report.execute(f"SELECT count(*) FROM {report_reads}")
        move = getattr(swap_window, command)
        first = swapping.InThread(lambda: move(db_.url, wait_s=60))
        swapping.wait_until(lambda: _someone_waits(dba, "a.wait_event_type = 'Lock' AND a.query LIKE 'LOCK TABLE%'"),
                            f"the first {command} to wait for {report_reads}")
        second = swapping.InThread(lambda: move(db_.url, wait_s=60))
        swapping.wait_until(lambda: _someone_waits(dba, locks.WAITING_FOR_MIGRATION_LOCK_SQL.format(pid="a.pid")),
                            f"the second {command} to wait for the first")
        report.commit()
        return first.result(timeout_s=60), second.result(timeout_s=60)


def test_two_finishes_at_once_close_the_window_once_and_the_second_finds_nothing_to_finish(head_db: Database):
    a, _ = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        kept = swapping.insert(conn, a.id, a.tables[0], slot(3))
        conn.commit()
    first, second = _closing_twice(head_db, "finish", "bookings")
    assert first.exit_code == 0 and "the window is closed" in _detail(first)
    assert second.exit_code == 0 and "nothing to finish" in _detail(second)
    with head_db.connect() as conn:
        assert swap_state.read(conn) is None
        assert [row[0] for row in conn.execute("SELECT id FROM allocations")] == [kept]


def test_two_aborts_at_once_drop_the_swap_once_and_the_second_finds_nothing_to_abort(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
    before = pre_swap_db.snapshot()
    # Before the backfill the shadow has no foreign keys: the drop locks allocations (the capture), not bookings.
    first, second = _closing_twice(pre_swap_db, "abort", "allocations")
    assert first.exit_code == 0 and "is as it was" in _detail(first)
    assert second.exit_code == 1 and "nothing to abort" in _detail(second)
    with pre_swap_db.connect() as conn:
        assert swap_state.read(conn) is None
    assert pre_swap_db.snapshot() != before  # the machinery is gone
