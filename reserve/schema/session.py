"""A database session for the schema's mechanics, inside Alembic or outside it, and bounded lock taking.

The revisions run their SQL through Alembic's connection (so the lock trace
sees every statement); the online swap's own commands (`reserve swap
finish`, `abort`, `status`) run through a plain psycopg connection. Both
speak the small interface here: ``execute(sql, params)`` returning rows,
``transaction()`` for a unit of work that commits whole, ``savepoint()``
for an attempt that may be undone. ``take(...)`` is the one place that takes
locks with a short wait per attempt and bounded retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from alembic import op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from reserve.schema import events, failures, locks
from reserve.schema.options import LockPolicy

log = logging.getLogger("reserve.schema.session")


def qualified_names(session: Session) -> None:
    """For the rest of the transaction, the catalog deparses every name with its schema (``::regclass``,
    ``pg_get_*def``): definitions read here are replayed on another table, in another schema."""
    session.execute("SELECT set_config('search_path', 'pg_catalog', true)")


# What the swap's correctness depends on, set on every session that moves or replays it (alembic, `reserve swap`),
# whatever the database's or the role's defaults (ALTER DATABASE/ROLE … SET) or PGOPTIONS say:
# - READ COMMITTED: every statement reads what committed before it. Under REPEATABLE READ the exchange's
#   tail was read with the snapshot of its first statement, taken before its locks were granted, and the
#   writes committed during that wait were lost;
# - row_security off: a read that row-level security would filter (FORCE ROW LEVEL SECURITY, an owner
#   without BYPASSRLS) raises 42501 instead of copying a partial table (the swap refuses such an owner
#   before it builds anything: reserve.schema.swap.refusals);
# - session_replication_role origin: the shadow's foreign-key triggers fire for the replay's writes (only a
#   superuser can change it; for anyone else it is checked: a role set to replica is refused).
# The swap's SQL names every object with its schema and its functions pin their search_path, so the session's
# search_path is left to the revisions' DDL (extensions may live in another schema, as Supabase's do).
# One statement; a transaction open already keeps its isolation, so it runs before the first one.
OWN_SETTINGS_SQL = (
    "SELECT set_config('default_transaction_isolation', 'read committed', false), "
    "set_config('row_security', 'off', false), "
    "CASE WHEN current_setting('session_replication_role') <> 'origin' "
    "THEN set_config('session_replication_role', 'origin', false) END"
)


class Session(Protocol):
    def execute(self, query: str, params: Any = None) -> Any: ...

    def transaction(self) -> Any: ...

    def savepoint(self) -> Any: ...


class AlembicSession:
    """Alembic's connection (``op.get_bind()``) as a Session.

    Inside the revision's own transaction, ``transaction()`` is not used;
    inside an ``autocommit_block()`` it opens real transactions with BEGIN and
    COMMIT, each committed on its own (the online swap's phases).
    """

    def execute(self, query: str, params: Any = None) -> Any:
        if params is None:
            return op.get_bind().exec_driver_sql(query, execution_options={"no_parameters": True})
        return op.get_bind().exec_driver_sql(query, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN")
        try:
            yield
        except BaseException:
            try:
                self.execute("ROLLBACK")
            except DBAPIError:
                pass  # the connection is gone: the server has rolled back already
            raise
        self.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        nested = op.get_bind().begin_nested()
        try:
            yield
        except BaseException:
            nested.rollback()
            raise
        nested.commit()

    @property
    def pid(self) -> int:
        return op.get_bind().connection.driver_connection.info.backend_pid


class PsycopgSession:
    """An autocommit psycopg connection as a Session (the `reserve swap` commands)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute(OWN_SETTINGS_SQL)

    def execute(self, query: str, params: Any = None) -> Any:
        return self.conn.execute(query, params)

    def transaction(self) -> Any:
        return self.conn.transaction()

    def savepoint(self) -> Any:
        return self.conn.transaction()

    @property
    def pid(self) -> int:
        return self.conn.info.backend_pid


class LockGiveUp(CommandError):
    """Every bounded attempt to take the locks timed out; nothing was changed."""


# A lock attempt that timed out, or that PostgreSQL cancelled to break a deadlock (an application
# transaction that holds one of the tables and waits for another): released whole, and tried again.
RETRIED = ("55P03", "40P01")


def take(session: Session, wanted: Mapping[str, str], *, action: str, policy: LockPolicy | None = None,
         restore_lock_timeout: str | None = None) -> None:
    """Take ``wanted`` (table -> SQL mode) in the current transaction, all of them, with a bounded wait.

    Each attempt waits at most ``policy.lock_timeout`` for all of them; a
    failed attempt (a timeout, or a deadlock PostgreSQL broke by cancelling it)
    is rolled back to a savepoint (releasing what it got, so no
    table stays locked while another is waited for), the sessions in the way
    are logged, and it is retried after a pause. When every attempt fails,
    LockGiveUp names them; the transaction is as it was. Tables that do not
    exist are skipped. Afterwards the transaction's lock_timeout is
    ``restore_lock_timeout`` (the run's own setting).
    """
    policy = policy or LockPolicy.from_x_options()
    existing = {row[0] for row in session.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL", (list(wanted),)).fetchall()}
    present = {table: mode for table, mode in wanted.items() if table in existing}
    if not present:
        return
    groups = locks.StepLocks(present).groups()
    names = ", ".join(sorted(present))
    in_the_way: list[locks.Holder] = []
    for attempt in range(1, policy.attempts + 1):
        try:
            with session.savepoint():
                session.execute("SELECT set_config('lock_timeout', %s, true)", (policy.lock_timeout,))
                for mode, tables in groups:
                    session.execute(f"LOCK TABLE {', '.join(tables)} IN {mode} MODE")
        except (DBAPIError, psycopg.Error) as exc:
            state = failures.sqlstate(exc)
            if state not in RETRIED:
                raise
            in_the_way = locks.holders(session, present)
            why = (f"not granted within {policy.lock_timeout}" if state == "55P03" else
                   "given up to break a deadlock with a transaction locking them in another order")
            log.warning("locks on %s %s (attempt %d/%d): %s", names, why, attempt, policy.attempts,
                        "; ".join(h.describe() for h in in_the_way) or "the holder has gone",
                        extra=events.lock_retry(names, attempt, why))
            if attempt < policy.attempts:
                time.sleep(policy.pause_s)
            continue
        if restore_lock_timeout is not None:
            session.execute("SELECT set_config('lock_timeout', %s, true)", (restore_lock_timeout,))
        log.info("%s: %s taken (attempt %d/%d)", action,
                 "; ".join(f"{mode} on {', '.join(tables)}" for mode, tables in groups), attempt, policy.attempts)
        return
    held_by = "; ".join(h.describe() for h in in_the_way) or "a transaction that has ended since"
    raise LockGiveUp(
        f"{action}: could not lock {names} after {policy.attempts} attempts of {policy.lock_timeout} "
        f"(in the way: {held_by}). Nothing was changed; rerun when they have finished, or raise -x swap_lock_attempts."
    )
