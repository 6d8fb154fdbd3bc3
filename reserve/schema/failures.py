"""One clear message per operational failure, instead of a traceback.

A migration or a ``reserve`` command that fails because of the database
(a lock it waited too long for, a timeout, a terminated backend, refused
data, a lost connection) tells the operator, in one message: what failed
(the step or command), what kind of failure it was, the table, who was in
the way (pids and application names, never their queries), and where the
database stands now. A traceback is left only for programming errors,
which are not database errors.

``alembic/env.py`` turns every database error of a step into such a message
(an Alembic CommandError, printed as one ``FAILED:`` line, exit 255); the
``reserve`` commands print it and exit 1, or 2 when the connection was lost
or the database refused the input (the exit code of every bad input).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError

from reserve.schema import locks

EXIT_FAILED, EXIT_CONNECTION = 1, 2
REFUSALS = ("refused data", "permission denied")

# Tables a statement names: schema-qualified anywhere, or unqualified after the keywords that name one.
_QUALIFIED = re.compile(r"\b(public|reserve_archive)\.(\w+)\b(?!\s*\()")
_UNQUALIFIED = re.compile(r"\b(?:UPDATE|INTO|FROM|TABLE|ON)\s+(\w+)\b(?![.(])", re.IGNORECASE)
_NOT_TABLES = {"only", "if", "select", "lateral", "conflict", "set", "nothing", "constraint", "pg_locks",
               "pg_stat_activity", "pg_class", "pg_index"}
# The statements that wait for other sessions' snapshots rather than for their table locks.
_WAITS_FOR_SNAPSHOTS = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """What kind of failure a database error is, in an operator's words."""

    kind: str  # "lock timeout", "statement timeout", "terminated", "connection lost", …
    detail: str  # the server's own message, first line
    connection_lost: bool = False  # the session is gone: exit 2 for a command
    contended: bool = False  # another session was in the way: worth naming who

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


def database_error(exc: BaseException) -> psycopg.Error | None:
    """The psycopg error in ``exc`` (SQLAlchemy wraps it), or None for anything that is not a database error."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig  # type: ignore[assignment]
    return exc if isinstance(exc, psycopg.Error) else None


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the database error in ``exc``, or None."""
    error = database_error(exc)
    return error.sqlstate if error is not None else None


def find_database_error(exc: BaseException) -> BaseException | None:
    """The database error behind ``exc``: itself, or the one it was raised while handling (SQLAlchemy raises a
    second error when it cannot finish a transaction on a connection the first one broke). A Ctrl-C in the
    chain wins: the operator interrupted, whatever broke while unwinding."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, KeyboardInterrupt) or database_error(current) is not None:
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def classify(error: psycopg.Error) -> Failure:
    """Name the failure by its SQLSTATE (and, for cancellations, by the server's reason)."""
    state = error.sqlstate or ""
    diag = getattr(error, "diag", None)
    message = (diag.message_primary if diag is not None and diag.message_primary else str(error)).strip()
    message = message.splitlines()[0] if message else ""
    detail = diag.message_detail if diag is not None and diag.message_detail else ""
    if state == "55P03":
        return Failure("lock timeout", message + " (lock_timeout expired while another session held the lock)",
                       contended=True)
    if state == "57014":
        if "statement timeout" in message:
            return Failure("statement timeout", message + " (statement_timeout expired)", contended=True)
        return Failure("canceled", message + " (pg_cancel_backend or a client cancel)", contended=True)
    if state in ("57P01", "57P02", "57P03") or state.startswith("08") or (not state and isinstance(
            error, psycopg.OperationalError)):
        return Failure("connection lost", message or "the server closed the connection "
                       "(pg_terminate_backend, a restart or a network failure)", connection_lost=True)
    if state == "40P01":
        return Failure("deadlock", message, contended=True)
    if state == "40001":
        return Failure("serialization failure", message, contended=True)
    if state.startswith("23") or state.startswith("22"):
        return Failure("refused data", f"{message}{': ' + detail if detail else ''} (SQLSTATE {state})")
    if state.startswith("53"):
        return Failure("insufficient resources", f"{message} (SQLSTATE {state})")
    if state == "42501":
        return Failure("permission denied", message)
    return Failure("database error", f"{message} (SQLSTATE {state or 'none'})")


def tables_in(statement: str | None) -> list[str]:
    """The schema-qualified tables a statement names, in order of first mention."""
    found: dict[str, None] = {}
    for schema, name in _QUALIFIED.findall(statement or ""):
        found[f"{schema}.{name}"] = None
    for name in _UNQUALIFIED.findall(statement or ""):
        if name.lower() not in _NOT_TABLES and name.lower() not in ("public", "reserve_archive"):
            found[f"public.{name}"] = None
    return list(found)


def failed_statement(exc: BaseException) -> str | None:
    """The statement that failed, when the driver or SQLAlchemy kept it."""
    statement = getattr(exc, "statement", None)
    return statement if isinstance(statement, str) else None


def one_line(statement: str | None, limit: int = 100) -> str:
    """A statement on one line, cut to ``limit`` characters: for messages and traces."""
    flat = " ".join((statement or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def in_the_way(conn: psycopg.Connection[Any] | Any, wanted: Mapping[str, str], statement: str | None,
               exclude: tuple[int, ...] = ()) -> list[str]:
    """Who would make ``statement`` wait: lock holders on ``wanted``'s tables, or, for a concurrent
    index build, every session of this database that holds a snapshot; when the tables are not known,
    whoever holds an exclusive lock on any table of this database."""
    if not wanted:
        return [h.describe() for h in locks.exclusive_holders(conn, exclude=exclude)]
    found = [h.describe() for h in locks.holders(conn, wanted, exclude=exclude)]
    if not found and _WAITS_FOR_SNAPSHOTS.search(statement or ""):
        found = [f"pid {pid} ({app or 'no application_name'}, {state or 'unknown state'}"
                 f"{f', in a transaction for {age:.0f}s' if age is not None else ''}) holds an older snapshot"
                 for pid, app, state, age in locks.snapshot_holders(conn, exclude=exclude)]
    return found


def message(action: str, exc: BaseException, *, wanted: Mapping[str, str] | None = None,
            diagnose: Callable[[Callable[[Any], list[str]]], list[str] | None] | None = None,
            where_now: str | None = None, exclude: tuple[int, ...] = ()) -> str:
    """The one-line message for ``exc`` raised by ``action`` ('downgrade 0004_…', 'reserve preflight').

    ``wanted`` is what the action locks (table -> mode); ``diagnose`` runs a
    function on a fresh connection (None when none can be opened);
    ``where_now`` says where the database stands after the failure.
    """
    error = database_error(exc)
    failure = classify(error) if error is not None else Failure("error", str(exc))
    statement = failed_statement(exc)
    tables = tables_in(statement) or sorted(wanted or {})
    parts = [f"{action} failed: {failure}"]
    if tables:
        parts.append(f"table: {', '.join(tables)}")
    if statement:
        parts.append(f"statement: {one_line(statement)}")
    if failure.contended and diagnose is not None:
        locked = dict(wanted or {})
        for table in tables:
            locked.setdefault(table, "ACCESS EXCLUSIVE")
        blockers = diagnose(lambda conn: in_the_way(conn, locked, statement, exclude))
        if blockers:
            parts.append("in the way: " + ", ".join(blockers))
        elif blockers is not None and failure.kind == "lock timeout":
            parts.append("in the way: nobody any more (the session that held the lock has finished)")
    if where_now:
        parts.append(where_now)
    return "; ".join(parts)


def diagnoser(url: Any) -> Callable[[Callable[[Any], Any]], Any]:
    """Run a diagnosis on a fresh, short-lived connection to ``url``; None when none can be opened."""
    from reserve import db

    def diagnose(fn: Callable[[Any], Any]) -> Any:
        try:
            with db.connect(url, autocommit=True) as conn:
                conn.execute("SET statement_timeout = '5s'")
                conn.execute("SET lock_timeout = '1s'")
                return fn(conn)
        except (psycopg.Error, db.ConnectionFailed):
            return None

    return diagnose


def exit_code(exc: BaseException) -> int:
    """For a ``reserve`` command: 2 when the connection was lost or the database refused the input (as for
    any bad input), else 1 (a failed step: a timeout, a cancellation, a deadlock)."""
    error = database_error(exc)
    if error is None:
        return EXIT_FAILED
    failure = classify(error)
    return EXIT_CONNECTION if failure.connection_lost or failure.kind in REFUSALS else EXIT_FAILED
