"""The server crashes in each phase of the online swap (``pg_ctl stop -m immediate``, every backend killed, no
checkpoint, then started again: recovery from the WAL): a plain rerun of the same command resumes or cleans up,
`reserve verify` names the state, no committed row is lost, and the application writes at once.

On a server of their own (the crash kills every session on it), with a template of generated allocations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reserve import db
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.rollout.verify import verify
from reserve.schema import guards
from reserve.schema.swap import state as swap_state
from tests import faults, swapping
from tests.support import REVISIONS, Database, cloned, reserve_cli

pytestmark = pytest.mark.slow  # `make test-slow`: its own server, crashed and restarted

ROWS = 20_000
ONLINE = ["-x", "swap_method=online"]
SLOW_BACKFILL = ["-x", "swap_batch_rows=1000", "-x", "swap_batch_pause=0.2"]
TEMPLATE = "crash_template"


@pytest.fixture(scope="module")
def crash_server() -> Iterator[EphemeralPostgres]:
    # fsync and synchronous_commit on, as in production: with them off a crash loses commits still in WAL buffers.
    with EphemeralPostgres(fsync=True) as server:
        with db.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        template = server.url(TEMPLATE)
        alembic_runner.upgrade(template, REVISIONS[-2])
        with db.connect(template, autocommit=True) as conn:
            dataset.generate(conn, dataset.Shape.for_rows(ROWS))
            conn.execute("VACUUM ANALYZE")
        yield server


@pytest.fixture
def below(crash_server: EphemeralPostgres) -> Iterator[Database]:
    """A fresh database below the swap, cloned from the template, on the crash server."""
    with cloned(crash_server, TEMPLATE) as database:
        yield database


def _rows(db_: Database) -> set[tuple[Any, ...]]:
    with db_.connect() as conn:
        return set(conn.execute("SELECT * FROM public.allocations").fetchall())


def _phase(db_: Database) -> str | None:
    with db_.connect() as conn:
        found = swap_state.read(conn)
        return found.phase if found else None


def _crash_while(server: EphemeralPostgres, db_: Database, args: list[str], reached: Callable[[], bool],
                 what: str) -> None:
    """Start ``alembic <args>``, crash the server once ``reached()``, start it again; the run has died."""
    proc = faults.start_alembic(db_.url, *args)
    try:
        faults.wait_until(reached, what, timeout_s=90, procs=[proc])
        server.crash_and_restart()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0


def _application_writes(db_: Database) -> None:
    """An insert and a delete, each allowed 2 s: nothing the crash left blocks or fails them."""
    with db_.connect() as app:
        app.execute("SET lock_timeout = '2s'")
        app.execute("SET statement_timeout = '2s'")
        (restaurant,) = app.execute("SELECT restaurant_id FROM allocations LIMIT 1").fetchone()
        (new,) = app.execute(
            "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") VALUES "
            "(%s, 'table', gen_random_uuid(), tstzrange(now() + interval '60 years', now() + interval '61 years')) "
            "RETURNING id", (restaurant,)).fetchone()
        app.execute("DELETE FROM allocations WHERE id = %s", (new,))
        app.commit()


def _verify_names(db_: Database) -> str:
    report = verify(db_.url)
    return " ".join(c.detail for c in report.checks)


def _copying(db_: Database) -> bool:
    with db_.connect() as conn:
        found = swap_state.read(conn)
        return found is not None and found.phase == swap_state.BUILDING and found.rows_copied >= ROWS // 4


def test_a_crash_with_the_backfill_half_done_is_resumed_by_a_rerun(crash_server, below):
    before = _rows(below)
    _crash_while(crash_server, below, [*ONLINE, *SLOW_BACKFILL, "upgrade", "head"], lambda: _copying(below),
                 "the backfill to be a quarter done")
    assert _phase(below) == swap_state.BUILDING
    assert "building its shadow" in _verify_names(below)
    _application_writes(below)
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    assert _rows(below) == before and _phase(below) == swap_state.WINDOW and below.current() == REVISIONS[-1]


def _someone_waits_to_lock(db_: Database) -> bool:
    with db_.connect() as dba:
        return dba.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%')").fetchone()[0]


def test_a_crash_while_the_exchange_waits_for_its_lock_keeps_the_shadow_and_a_rerun_exchanges(crash_server, below):
    before = _rows(below)
    app = below.connect()  # holds a table the exchange re-points (no snapshot kept: READ COMMITTED, no xid)
    try:
        app.execute("LOCK TABLE booking_table_assignments IN ACCESS SHARE MODE")
        _crash_while(crash_server, below, [*ONLINE, "-x", "swap_lock_timeout=60s", "-x", "swap_lock_attempts=1",
                                           "upgrade", "head"],
                     lambda: _phase(below) == swap_state.BACKFILLED and _someone_waits_to_lock(below),
                     "the exchange to wait for its lock")
    finally:
        app.close()
    assert _phase(below) == swap_state.BACKFILLED
    with below.connect() as conn:
        assert guards.is_in_place(conn, guards.OLD_GUARD)  # nothing exchanged
    assert "backfilled" in _verify_names(below)  # pending names the phase: building its shadow (backfilled)
    _application_writes(below)
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    assert _rows(below) == before and _phase(below) == swap_state.WINDOW


def test_a_crash_inside_the_window_keeps_it_and_the_rollback_is_still_an_exchange_back(crash_server, below):
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    before = _rows(below)
    crash_server.crash_and_restart()
    assert _phase(below) == swap_state.WINDOW
    _application_writes(below)
    code, output = faults.run_alembic(below.url, "downgrade", "-1")
    assert code == 0, output
    assert "exchanged" in output
    assert _rows(below) == before and below.current() == REVISIONS[-2]
    with below.connect() as conn:
        assert guards.is_in_place(conn, guards.OLD_GUARD) and swap_state.read(conn) is None


def _swap_finish(db_: Database) -> Any:
    return reserve_cli(db_.url, "swap", "finish", "--json")


def test_a_crash_while_finish_waits_to_drop_the_previous_table_leaves_it_detached_for_a_rerun(crash_server, below):
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    before = _rows(below)
    report = below.connect()
    try:
        report.execute("SELECT count(*) FROM bookings")  # a long report: finish's drop of the machinery waits
        finishing = swapping.InThread(lambda: _swap_finish(below))
        faults.wait_until(lambda: _phase(below) == swap_state.DETACHED and _someone_waits_to_lock(below),
                          "finish to wait for bookings", timeout_s=60)
        crash_server.crash_and_restart()
        assert finishing.result(timeout_s=60).exit_code != 0
    finally:
        report.close()
    assert _phase(below) == swap_state.DETACHED
    assert "interrupted `reserve swap finish`" in _verify_names(below)
    _application_writes(below)
    assert _swap_finish(below).exit_code == 0
    assert _phase(below) is None and _rows(below) == before


def test_a_crash_while_the_rollback_waits_to_exchange_back_keeps_the_window_for_a_rerun(crash_server, below):
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    before = _rows(below)
    app = below.connect()  # holds a table the exchange back re-points: the rollback waits for it
    try:
        app.execute("LOCK TABLE booking_table_assignments IN ACCESS SHARE MODE")
        _crash_while(crash_server, below, ["-x", "swap_lock_timeout=60s", "-x", "swap_lock_attempts=1",
                                           "downgrade", "-1"],
                     lambda: _someone_waits_to_lock(below), "the exchange back to wait for its lock")
    finally:
        app.close()
    assert _phase(below) == swap_state.WINDOW and below.current() == REVISIONS[-1]
    _application_writes(below)
    code, output = faults.run_alembic(below.url, "downgrade", "-1")
    assert code == 0, output
    assert _rows(below) == before and below.current() == REVISIONS[-2] and _phase(below) is None


def test_a_crash_with_a_rollbacks_table_left_retired_keeps_it_for_finish(crash_server, below):
    """The rollback's one attempt to drop the table it replaced gives up behind a report on bookings: retired,
    emptied. A crash then changes nothing: finish drops it, every row of the live table kept."""
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    report = below.connect()
    try:
        report.execute("SELECT count(*) FROM bookings")
        code, output = faults.run_alembic(below.url, "-x", "swap_lock_timeout=200ms", "downgrade", "-1")
        assert code == 0, output
    finally:
        report.close()
    assert _phase(below) == swap_state.RETIRED
    before = _rows(below)
    crash_server.crash_and_restart()
    assert _phase(below) == swap_state.RETIRED and "left the table it replaced" in _verify_names(below)
    _application_writes(below)
    assert _swap_finish(below).exit_code == 0
    assert _phase(below) is None and _rows(below) == before and below.current() == REVISIONS[-2]


def test_a_crash_while_the_exchange_holds_its_lock_rolls_it_back_whole_and_a_rerun_exchanges(crash_server, below):
    before = _rows(below)
    dba, first, gate = below.connect(autocommit=True), below.connect(), below.connect()  # all end in the crash
    try:
        proc = faults.stop_the_exchange_at_the_queue(below, dba, first, gate)
        crash_server.crash_and_restart()
        proc.communicate(timeout=60)
    finally:
        for conn in (dba, first, gate):
            conn.close()
    assert proc.returncode != 0
    assert _phase(below) == swap_state.BACKFILLED  # the exchange is one transaction: none of it survived
    with below.connect() as conn:
        assert guards.is_in_place(conn, guards.OLD_GUARD)
    _application_writes(below)
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    assert _rows(below) == before and _phase(below) == swap_state.WINDOW


def test_a_crash_while_the_repointed_keys_are_validated_keeps_the_exchange_and_a_rerun_validates(crash_server, below):
    table = "public.booking_table_assignments"
    before = _rows(below)
    dba, first, gate = below.connect(autocommit=True), below.connect(), below.connect()  # all end in the crash
    try:
        proc = faults.stop_the_exchange_at_the_queue(below, dba, first, gate)
        with faults.queued_behind_the_exchange(below.url, table, "SHARE") as granted:
            faults.wait_until(lambda: faults.lock_waiters(dba, table) > 0, "a session to queue behind the exchange",
                              procs=[proc])
            gate.rollback()  # the exchange commits; the validation then waits for the queued session
            assert granted.wait(30)
            faults.wait_for_backend(dba, query_contains="SHARE UPDATE EXCLUSIVE MODE", waiting_on_lock=True, proc=proc)
            assert _phase(below) == swap_state.SWAPPED
            crash_server.crash_and_restart()
        proc.communicate(timeout=60)
    finally:
        for conn in (dba, first, gate):
            conn.close()
    assert _phase(below) == swap_state.SWAPPED and "validating the re-pointed foreign keys" in _verify_names(below)
    with below.connect() as conn:
        assert guards.is_in_place(conn, guards.NEW_GUARD)  # the exchange committed: the new guard is in force
    _application_writes(below)
    code, output = faults.run_alembic(below.url, *ONLINE, "upgrade", "head")
    assert code == 0, output
    assert _rows(below) == before and _phase(below) == swap_state.WINDOW
