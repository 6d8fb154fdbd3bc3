"""Fault injection for the migration (test mechanics, not shipped): run Alembic as an operator
does, interrupt it at a chosen moment, and prove where the database ended up.

Why: a migration can be killed in ways no test of the happy path covers: a DBA's
``pg_terminate_backend``, ``statement_timeout``, the operator's ``kill -9`` (or an
OOM killer, or a dropped SSH session), two operators starting it at once. Each
must leave the database at a revision boundary (its catalog equal to one
revision's shipped expectation, and ``alembic_version`` naming that revision),
from which a plain rerun of ``alembic upgrade head`` finishes. These helpers
find the migrating backend by its ``application_name`` (``reserve-migrations``,
set by ``alembic/env.py``) and what it is doing in ``pg_stat_activity``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.rollout import alembic_runner
from reserve.schema import catalog, expectations, revisions
from reserve.schema.swap import state as swap_state
from tests.support import WaitedTooLong, wait_until  # noqa: F401 (wait_until: for the fault tests)

MIGRATION_APPLICATION = "reserve-migrations"


# The moment to inject the fault never came (the migration finished first, or hung elsewhere).
FaultTimeout = WaitedTooLong


def start_alembic(url: URL, *args: str) -> subprocess.Popen[str]:
    """``python -m alembic <args>`` with DATABASE_URL set, as an operator would run it; output captured."""
    return alembic_runner.start_cli(url, *args)


def finish(proc: subprocess.Popen[str], url: URL, timeout_s: float = 120) -> tuple[int, str]:
    """Wait for an Alembic run; its exit code and its output, password scrubbed."""
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return -1, db.scrub(output or "", url) + f"\n(killed after {timeout_s}s)"
    return proc.returncode, db.scrub(output or "", url)


def run_alembic(url: URL, *args: str, timeout_s: float = 120) -> tuple[int, str]:
    return finish(start_alembic(url, *args), url, timeout_s)


@dataclass(frozen=True)
class Backend:
    """A migrating session as pg_stat_activity shows it."""

    pid: int
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    query: str


def migration_backends(conn: psycopg.Connection[Any]) -> list[Backend]:
    """Sessions of Alembic runs (of this package) on ``conn``'s database."""
    rows = conn.execute(
        "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid",
        (MIGRATION_APPLICATION,),
    ).fetchall()
    return [Backend(*row) for row in rows]


def wait_for_backend(conn: psycopg.Connection[Any], *, query_contains: str, waiting_on_lock: bool | None = None,
                     proc: subprocess.Popen[str] | None = None, timeout_s: float = 60, poll_s: float = 0.01) -> Backend:
    """Poll until a migrating backend runs a statement containing ``query_contains``.

    ``waiting_on_lock``: True to require that it waits on a heavyweight lock,
    False that it does not. Raises FaultTimeout when ``proc`` ends first or time
    runs out: the fault would otherwise be injected at the wrong moment.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for backend in migration_backends(conn):
            if backend.state != "active" or query_contains not in backend.query:
                continue
            if waiting_on_lock is None or waiting_on_lock == (backend.wait_event_type == "Lock"):
                return backend
        if proc is not None and proc.poll() is not None:
            raise FaultTimeout(f"alembic exited ({proc.returncode}) before running {query_contains!r}")
        time.sleep(poll_s)
    raise FaultTimeout(f"no migrating backend ran {query_contains!r} within {timeout_s}s")


def terminate(conn: psycopg.Connection[Any], pid: int) -> bool:
    """pg_terminate_backend, as a DBA would; True when the signal was sent."""
    return conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def kill_client(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the Alembic process: no cleanup, no rollback sent; the server finds out on its own."""
    os.kill(proc.pid, signal.SIGKILL)


def wait_gone(conn: psycopg.Connection[Any], pid: int, timeout_s: float = 60) -> float:
    """Seconds until backend ``pid`` has left pg_stat_activity (its transaction is then rolled back)."""
    started = time.monotonic()
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
        if time.monotonic() - started > timeout_s:
            raise FaultTimeout(f"backend {pid} still there after {timeout_s}s")
        time.sleep(0.01)
    return time.monotonic() - started


@contextmanager
def holding_lock(url: URL, table: str, mode: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session holds ``mode`` on ``table`` in an open transaction until the block ends.

    ``ACCESS SHARE`` is what any long read holds; ``ROW EXCLUSIVE`` what any
    open write transaction holds. Both make the swap's lock wait; the second
    also makes CREATE INDEX CONCURRENTLY wait for it.
    """
    with db.connect(url) as conn:
        conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
        try:
            yield conn
        finally:
            conn.rollback()


def terminated_while_waiting(url: URL, blocker: tuple[str, str], query_contains: str, *args: str) -> tuple[int, str]:
    """Another session holds ``blocker`` (table, mode); ``alembic <args>`` waits for it in a statement containing
    ``query_contains``; a DBA terminates the migrating backend there. The run's exit code and output."""
    with holding_lock(url, *blocker), db.connect(url, autocommit=True) as dba:
        proc = start_alembic(url, *args)
        backend = wait_for_backend(dba, query_contains=query_contains, waiting_on_lock=True, proc=proc)
        assert terminate(dba, backend.pid)
        return finish(proc, url)


@dataclass
class Boundary:
    """Where a database stands: the revision it records and the revisions its catalog matches exactly."""

    recorded: str | None
    matching: list[str]
    pending_indexes: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # from the recorded revision's expectation
    swap: swap_state.SwapState | None = None  # an online swap in flight, or its open window

    @property
    def window_open(self) -> bool:
        return self.swap is not None and self.swap.phase == swap_state.WINDOW

    @property
    def at(self) -> str | None:
        """The revision the database is exactly at, or None when it is between revisions."""
        return self.recorded if self.recorded in self.matching else None


def boundary(conn: psycopg.Connection[Any]) -> Boundary:
    """Compare the live catalog with every revision's shipped expectation.

    ``reserve_pending_*`` indexes (a rollback's prebuilt index, dropped by the
    next run) are not part of any revision's schema and are listed apart. At the swap's revision an open
    window (the online upgrade's machinery, exactly as shipped) is one of its two states.
    """
    live = catalog.snapshot(conn)
    recorded = revisions.current_revision(conn)
    matching = [rev for rev in expectations.shipped() if not expectations.differences(rev, live)]
    differences: list[str] = []
    if recorded in expectations.shipped():
        differences = expectations.reasons(expectations.differences(recorded, live))
    return Boundary(recorded, matching, catalog.pending_indexes(conn), differences, swap_state.read(conn))


def advisory_waiters(conn: psycopg.Connection[Any]) -> int:
    """Migrating sessions waiting for an advisory lock (the migration lock) on this database."""
    return conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s "
        "AND a.datname = current_database()",
        (MIGRATION_APPLICATION,),
    ).fetchone()[0]


def start_two_runs(dba: psycopg.Connection[Any], url: URL, *args: str,
                   first_inside: Any = None) -> list[subprocess.Popen[str]]:
    """Two identical Alembic runs at once; returns when the second is seen queued for the first's migration lock
    (``first_inside(proc)`` waits first for the first to be inside its work). Both killed if that never comes."""
    runs = [start_alembic(url, *args) for _ in range(2)]
    try:
        if first_inside is not None:
            first_inside(runs[0])
        wait_until(lambda: advisory_waiters(dba) == 1, "the second run to queue", procs=runs)
    except BaseException:
        for run in runs:
            run.kill()
            run.wait()
        raise
    return runs


def assert_one_ran_and_the_other_waited(results: list[tuple[int, str]], ran: str) -> None:
    """Both runs succeeded; exactly one ran the step (``ran`` in its output), the other waited and found it done."""
    assert [code for code, _ in results] == [0, 0], results
    outputs = [output for _, output in results]
    assert sum(ran in output for output in outputs) == 1, outputs
    assert sum("another migration run is in progress" in output for output in outputs) == 1, outputs


# ---------------------------------------------------------------- moments of the online exchange


def wait_for_exchange_lock(dba: psycopg.Connection[Any], proc: Any) -> Backend:
    """The online exchange waiting for its ACCESS EXCLUSIVE lock (the build and the backfill are done)."""
    return wait_for_backend(dba, query_contains="ACCESS EXCLUSIVE MODE", waiting_on_lock=True, proc=proc, timeout_s=90)


@contextmanager
def queued_behind_the_exchange(url: Any, table: str, mode: str) -> Iterator[threading.Event]:
    """A session that asks for ``mode`` on ``table`` while the exchange holds it: granted right after the
    exchange commits (the lock queue is first come, first served), then held until the block ends, so that
    whatever the swap does next on ``table`` waits for it. Yields an event set once it is granted."""
    granted, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = db.connect(url, options="")
        try:
            conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
            granted.set()
            release.wait(120)
        except psycopg.OperationalError:
            pass  # the server went away (the crash tests): nothing is held any more
        finally:
            conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield granted
    finally:
        release.set()
        thread.join(timeout=30)


def lock_waiters(dba: psycopg.Connection[Any], table: str) -> int:
    return dba.execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                       (table,)).fetchone()[0]


def holds_access_exclusive(dba: psycopg.Connection[Any], table: str) -> bool:
    """Does the migrating session hold ACCESS EXCLUSIVE on ``table``?"""
    return dba.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.relation = %s::regclass "
        "AND l.granted AND l.mode = 'AccessExclusiveLock' AND a.application_name = %s",
        (table, MIGRATION_APPLICATION)).fetchone()[0] > 0


def stop_the_exchange_at_the_queue(db_: Any, dba: psycopg.Connection[Any], first: psycopg.Connection[Any],
                                   gate: psycopg.Connection[Any], *extra: str) -> Any:
    """Start the upgrade and stop its exchange holding ACCESS EXCLUSIVE on allocations and its dependents:
    ``gate`` holds the swap's state row, whose compare-and-set is the first thing the exchange does once its
    locks are granted; the Alembic process."""
    first.execute("LOCK TABLE allocations IN ACCESS SHARE MODE")
    proc = start_alembic(db_.url, "-x", "swap_method=online", "-x", "swap_lock_timeout=30s", "-x", "swap_lock_attempts=1",
                         *extra, "upgrade", "head")
    wait_for_exchange_lock(dba, proc)  # the build and the backfill are done
    gate.execute(f"SELECT 1 FROM {swap_state.STATE} FOR UPDATE")
    first.rollback()
    wait_until(lambda: holds_access_exclusive(dba, "public.allocations") and any(
        b.wait_event_type == "Lock" for b in migration_backends(dba)),
        "the exchange to hold allocations and wait for the state row", procs=[proc])
    return proc
