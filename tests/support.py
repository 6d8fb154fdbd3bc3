"""What tests share: making a database from a template, running Alembic and the `reserve` command against it,
waiting for a moment another connection reaches, and building booking data.

Kept out of conftest.py so that test modules can import it by name.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner, Result
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import URL

from reserve import db
from reserve.cli import main
from reserve.operations import swap_window
from reserve.report import OK
from reserve.rollout import alembic_runner
from reserve.schema import catalog, revisions

# The repository, for its own files (README, docs, ops, bench results); where the chain lives is
# revisions.alembic_ini()'s to say.
ROOT = Path(__file__).resolve().parents[1]
# -x for 0004's online method, said explicitly (it is also the default).
ONLINE = ["swap_method=online"]
# The chain, oldest first, as Alembic walks it (reserve.schema.revisions is the one place that knows).
REVISIONS = revisions.chain()


_database_numbers = itertools.count(1)


# ---------------------------------------------------------------- databases on the test server

def maintenance_url(server: Any) -> URL:
    """The server's maintenance database: TEST_DATABASE_URL's own database, else ``postgres``."""
    return server.url(getattr(server, "maintenance_db", "postgres"))


def janitor(server: Any, dbname: str, **kwargs: Any) -> DatabaseJanitor:
    """pytest-postgresql's janitor for ``dbname`` on ``server``: creates it (from ``template_dbname``, ending the
    sessions left on the template) and drops it with its sessions."""
    url = server.url()
    return DatabaseJanitor(user=url.username, host=url.host, port=url.port or 5432, password=url.password,
                           dbname=dbname, maintenance_dbname=getattr(server, "maintenance_db", "postgres"), **kwargs)


@contextmanager
def cloned(server: Any, template: str, name: str | None = None) -> Iterator[Database]:
    """The one way tests copy a database: ``CREATE DATABASE … TEMPLATE template``, dropped on exit. Named
    ``name``, or uniquely for this process (pytest-xdist workers share a server)."""
    name = name or f"reserve_test_{os.getpid()}_{next(_database_numbers)}"
    with janitor(server, name, template_dbname=template):
        yield Database(name, server.url(name))


def reliability_figure(what: str) -> str:
    """The row of docs/RELIABILITY.md's figures table for ``what``: a count typed there is pinned by a test."""
    for line in (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {what} |"):
            return line
    raise AssertionError(f"docs/RELIABILITY.md has no figure {what!r}")


class WaitedTooLong(AssertionError):
    """The moment a test waited for never came (what it waited for finished first, or hung elsewhere)."""


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60,
               procs: Sequence[subprocess.Popen[str]] = ()) -> float:
    """Synchronization only: poll ``condition()`` until it holds (the timeout only stops a hung test); the
    seconds it took. WaitedTooLong when time runs out, or when one of ``procs`` (an Alembic run) ends first."""
    started = time.monotonic()
    while not condition():
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            output = (ended[0].communicate()[0] or "")[-3000:]
            raise WaitedTooLong(f"a run ended ({ended[0].returncode}) before {what}:\n{output}")
        if time.monotonic() - started > timeout_s:
            raise WaitedTooLong(f"gave up waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def reserve_cli(url: URL | None, *args: str, catch_exceptions: bool = False) -> Result:
    """``reserve <args>`` in-process, with DATABASE_URL set to ``url`` (None: as the environment has it); not thread-safe (click's
    runner swaps sys.stdout): from threads, call the library function the command wraps."""
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)} if url is not None else {}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=catch_exceptions)


@dataclass
class Database:
    """A test's own database on the throw-away server."""

    name: str
    url: URL

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A session as an application's: no tool lock_timeout (tests wait on locks on purpose)."""
        return db.connect(self.url, **{"options": "", "application_name": "reserve-test", **kwargs})

    def upgrade(self, revision: str = "head", x: list[str] | None = None) -> None:
        alembic_runner.upgrade(self.url, revision, x)

    def downgrade(self, revision: str, x: list[str] | None = None) -> None:
        alembic_runner.downgrade(self.url, revision, x)

    def close_window(self) -> None:
        """Close the online upgrade's window (`reserve swap finish`): head exactly as the locked method leaves it."""
        report = swap_window.finish(self.url)
        assert [check.status for check in report.checks] == [OK], report.to_text()

    def current(self) -> str | None:
        with self.connect() as conn:
            exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]
            if not exists:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None

    def snapshot(self) -> catalog.Snapshot:
        with self.connect() as conn:
            return catalog.snapshot(conn)


# ---------------------------------------------------------------- booking data

NOW = datetime.now(UTC).replace(microsecond=0)


def slot(hours_from_now: float, length_hours: float = 2) -> tuple[datetime, datetime]:
    """A booking window starting ``hours_from_now`` hours after the test run started."""
    start = NOW + timedelta(hours=hours_from_now)
    return start, start + timedelta(hours=length_hours)


class Venue:
    """A restaurant with a zone and tables, written as the table owner (RLS does not apply)."""

    def __init__(self, conn: psycopg.Connection[Any], name: str = "Venue", tables: int = 3,
                 mobility: str = "movable") -> None:
        self.conn = conn
        self.id = conn.execute("INSERT INTO restaurants (name) VALUES (%s) RETURNING id", (name,)).fetchone()[0]
        self.zone = self.add_zone("Main")
        self.tables = [self.add_table(f"T{i + 1}", mobility=mobility) for i in range(tables)]

    def add_zone(self, name: str) -> uuid.UUID:
        return self.conn.execute(
            "INSERT INTO zones (restaurant_id, name) VALUES (%s, %s) RETURNING id", (self.id, name)
        ).fetchone()[0]

    def add_table(self, number: str, *, zone: uuid.UUID | None | str = "default", capacity: int = 4,
                  mobility: str = "movable", active: bool = True) -> uuid.UUID:
        zone_id = self.zone if zone == "default" else zone
        return self.conn.execute(
            "INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity, mobility, active) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (self.id, zone_id, number, capacity, mobility, active),
        ).fetchone()[0]

    def connect_tables(self, a: uuid.UUID, b: uuid.UUID) -> None:
        self.conn.execute("INSERT INTO table_adjacencies (table_a, table_b) VALUES (%s, %s)", (a, b))

    def booking(self, window: tuple[datetime, datetime] | None = None, status: str = "pending") -> uuid.UUID:
        start, end = window or slot(24)
        return self.conn.execute(
            "INSERT INTO bookings (restaurant_id, status, start_at, end_at) VALUES (%s, %s, %s, %s) RETURNING id",
            (self.id, status, start, end),
        ).fetchone()[0]

    def hold(self, tables: list[uuid.UUID], window: tuple[datetime, datetime] | None = None, *,
             booking: uuid.UUID | None = None, expires_in: timedelta = timedelta(minutes=10),
             metadata: dict[str, Any] | None = None) -> uuid.UUID:
        start, end = window or slot(24)
        hold_id = self.conn.execute(
            "INSERT INTO table_holds (restaurant_id, zone_id, booking_id, start_at, end_at, expires_at, metadata) "
            "VALUES (%s, %s, %s, %s, %s, now() + %s, %s) RETURNING id",
            (self.id, self.zone, booking, start, end, expires_in, psycopg.types.json.Jsonb(metadata or {})),
        ).fetchone()[0]
        for table in tables:
            self.conn.execute("INSERT INTO table_hold_members (hold_id, table_id) VALUES (%s, %s)", (hold_id, table))
        return hold_id


CONFIRM = (
    "SELECT * FROM confirm_hold_assignment_tx(p_hold_id => %(hold)s, p_booking_id => %(booking)s, "
    "p_idempotency_key => %(key)s, p_require_adjacency => %(adjacency)s, p_assigned_by => %(actor)s, "
    "p_window_start => %(start)s, p_window_end => %(end)s, p_expected_policy_version => %(policy)s, "
    "p_expected_adjacency_hash => %(hash)s, p_target_status => %(status)s)"
)


def confirm(conn: psycopg.Connection[Any], hold: uuid.UUID, booking: uuid.UUID, key: str | None = "key-1",
            **kwargs: Any) -> list[tuple[Any, ...]]:
    """Call confirm_hold_assignment_tx with named arguments; returns its rows."""
    params = {"hold": hold, "booking": booking, "key": key, "adjacency": False, "actor": None, "start": None,
              "end": None, "policy": None, "hash": None, "status": None, **kwargs}
    return conn.execute(CONFIRM, params).fetchall()


def sqlstate_of(excinfo: Any) -> str | None:
    return getattr(excinfo.value, "sqlstate", None)


# ---------------------------------------------------------------- calling functions, roles, counting rows

def call_confirm(conn: psycopg.Connection[Any], **params: Any) -> list[tuple[Any, ...]]:
    """Call confirm_hold_assignment_tx with exactly the parameters given, by name without the ``p_``
    prefix (``hold_id=…`` for ``p_hold_id``); dicts are sent as jsonb. Reaches every parameter,
    including the history ones that ``confirm`` leaves at their defaults."""
    args = {name: psycopg.types.json.Jsonb(value) if isinstance(value, dict) else value
            for name, value in params.items()}
    named = ", ".join(f"p_{name} => %({name})s" for name in args)
    return conn.execute(f"SELECT * FROM confirm_hold_assignment_tx({named})", args).fetchall()


ASSIGN = (
    "SELECT * FROM assign_tables_atomic_v2(p_booking_id => %(booking)s, p_table_ids => %(tables)s::uuid[], "
    "p_idempotency_key => %(key)s, p_require_adjacency => %(adjacency)s, p_assigned_by => %(actor)s, "
    "p_start_at => %(start)s, p_end_at => %(end)s)"
)


def assign_tables(conn: psycopg.Connection[Any], booking: uuid.UUID, tables: list[uuid.UUID],
                  key: str | None = None, **kwargs: Any) -> list[tuple[Any, ...]]:
    """Call assign_tables_atomic_v2 with named arguments; returns its rows
    ``(table_id, start_at, end_at, merge_group_id)``."""
    params = {"booking": booking, "tables": list(tables), "key": key, "adjacency": False, "actor": None,
              "start": None, "end": None, **kwargs}
    return conn.execute(ASSIGN, params).fetchall()


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    return conn.execute(query, params).fetchone()[0]


BOOKING_ROWS = {
    "allocations": "SELECT count(*) FROM allocations WHERE booking_id = %s",
    "assignments": "SELECT count(*) FROM booking_table_assignments WHERE booking_id = %s",
    "idempotency": "SELECT count(*) FROM booking_assignment_idempotency WHERE booking_id = %s",
    "outbox": "SELECT count(*) FROM capacity_outbox WHERE booking_id = %s",
    "history": "SELECT count(*) FROM booking_state_history WHERE booking_id = %s",
}


def booking_rows(conn: psycopg.Connection[Any], booking: uuid.UUID) -> dict[str, int]:
    """How many rows an assignment or a confirmation has written for ``booking``, per table."""
    return {name: scalar(conn, query, (booking,)) for name, query in BOOKING_ROWS.items()}


NOTHING_WRITTEN = dict.fromkeys(BOOKING_ROWS, 0)


def act_as(conn: psycopg.Connection[Any], role: str, restaurant: uuid.UUID | None = None) -> None:
    """Switch the current transaction to ``role`` (SET LOCAL ROLE, so a rollback or commit ends it)
    and, when ``restaurant`` is given, set the tenant context the way an application does."""
    conn.execute(psycopg.sql.SQL("SET LOCAL ROLE {}").format(psycopg.sql.Identifier(role)))
    if restaurant is not None:
        conn.execute("SELECT set_restaurant_context(%s)", (restaurant,))


# The baseline's tenant tables, with the expression (over alias t) naming the restaurant a row
# belongs to; shared by the tenant-isolation tests (tests/sql) and the RLS property test.
BASELINE_ROW_OWNER = {
    "restaurants": "t.id",
    "zones": "t.restaurant_id",
    "table_inventory": "t.restaurant_id",
    "table_adjacencies": "(SELECT ti.restaurant_id FROM table_inventory ti WHERE ti.id = t.table_a)",
    "bookings": "t.restaurant_id",
    "booking_state_history": "(SELECT b.restaurant_id FROM bookings b WHERE b.id = t.booking_id)",
    "allocations": "t.restaurant_id",
    "table_holds": "t.restaurant_id",
    "table_hold_members": "(SELECT h.restaurant_id FROM table_holds h WHERE h.id = t.hold_id)",
    "booking_table_assignments": "(SELECT b.restaurant_id FROM bookings b WHERE b.id = t.booking_id)",
    "booking_assignment_idempotency": "(SELECT b.restaurant_id FROM bookings b WHERE b.id = t.booking_id)",
    "capacity_outbox": "t.restaurant_id",
}
