"""Alembic environment for reserve-migrations.

- The URL comes from DATABASE_URL (``postgresql://`` is driven by psycopg 3);
  it is never printed with its password.
- Online, every revision runs in its own transaction, under session-level
  ``lock_timeout`` and ``statement_timeout`` (``-x lock_timeout=…``,
  ``-x statement_timeout=…``) and ``client_connection_check_interval`` (a
  killed client's backend stops within a second instead of finishing the
  build under the lock), and the whole run holds a session-level
  advisory lock so that two concurrent ``alembic upgrade`` runs serialize.
  The session-level lock (not the xact variant) survives the commits that
  ``transaction_per_migration`` and ``autocommit_block()`` make.
- A database error in a step becomes one ``FAILED:`` line (reserve.schema.failures):
  the step, the kind of failure, the table, who was in the way, and where
  the database stands now. Tracebacks are left for programming errors.
- ``-x lock_trace=FILE`` writes the lock trace (reserve.schema.locktrace): the table
  locks held after every statement, per step.
- Offline (``--sql``) emits a script for ``psql -v ON_ERROR_STOP=1`` with the
  same timeouts and the same advisory lock.
"""

from __future__ import annotations

import logging
import sys
from logging.config import fileConfig
from pathlib import Path
from typing import Any

import psycopg
from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from reserve import db
from reserve.schema import events, failures, locks, locktrace, movers, options, revisions, session
from reserve.schema.swap import state as swap_state

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("reserve.env")
events.write_from_env(logging.getLogger("reserve"))  # RESERVE_EVENTS_FILE: holds and retries as JSON lines

MIGRATION_LOCK_KEY = locks.MIGRATION_LOCK_KEY
session_setting = options.session_setting


# What an offline script is, said where the DBA reads it: a script cannot wait for a backfill between its
# statements, so 0004 is the locked swap here (the online one needs a live connection).
OFFLINE_HEADER = (
    "reserve-migrations offline script: apply with psql -v ON_ERROR_STOP=1 -f <file>.",
    "0004_allocations_no_overlap in this script is the LOCKED swap (-x swap_method=locked): ACCESS EXCLUSIVE on",
    "allocations while PostgreSQL builds and checks the guard (README, \"Honest lock times\"). The default online",
    "swap (milliseconds under the lock) copies the table in batches that commit one by one: it needs",
    "`alembic upgrade head` on a live connection.",
    "The session runs READ COMMITTED with row_security off (a row it cannot see raises, never goes missing) and",
    "session_replication_role origin, whatever the database's or role's defaults (reserve.schema.session).",
)


def run_migrations_offline() -> None:
    """Write the SQL script for a DBA to review and apply with psql."""
    options.check_x_options(offline=True)
    context.configure(
        dialect_name="postgresql",
        dialect_opts={"paramstyle": "named"},
        literal_binds=True,
        transaction_per_migration=True,
    )
    context.get_context().impl.static_output("\n".join(f"-- {line}".rstrip() for line in OFFLINE_HEADER))
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{session_setting('migration_lock_wait')}'")
        context.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
        context.execute(f"SET lock_timeout = '{session_setting('lock_timeout')}'")
        context.execute(f"SET statement_timeout = '{session_setting('statement_timeout')}'")
        context.execute(f"SET client_connection_check_interval = '{session_setting('client_connection_check_interval')}'")
        context.execute(session.OWN_SETTINGS_SQL)  # READ COMMITTED, row_security off: reserve.schema.session
        context.run_migrations()
        context.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")


def _url() -> URL:
    try:
        return db.sqlalchemy_url(config.attributes.get("database_url"))
    except db.DatabaseUrlError as exc:
        raise CommandError(str(exc)) from None


def _connect(url: URL):
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": 10, "application_name": "reserve-migrations"},
    )
    try:
        return engine.connect()
    except DBAPIError as exc:
        raise CommandError(str(db.connection_failed(exc, url))) from None


def _set_session(connection, name: str, option: str) -> None:
    """Set PostgreSQL setting ``name`` for this session to the value of ``-x option``."""
    try:
        connection.execute(text("SELECT set_config(:n, :v, false)"), {"n": name, "v": session_setting(option)})
    except DBAPIError as exc:
        raise CommandError(f"invalid -x {option}: {str(exc.orig).strip().splitlines()[0]}") from None


def _take_migration_lock(connection) -> None:
    """Serialize concurrent runs: wait (bounded) for any other run to finish."""
    # Validated before anything else, so a typo fails every run, not only a contended one.
    _set_session(connection, "lock_timeout", "migration_lock_wait")
    got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY}).scalar()
    if not got:
        wait = session_setting("migration_lock_wait")
        log.info("another migration run is in progress; waiting up to %s for it to finish", wait)
        try:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        except DBAPIError:
            connection.rollback()
            holders = connection.execute(text(movers.HOLDERS_SQL)).fetchall()
            raise CommandError(
                f"another run (alembic, or a `reserve swap` command) still holds the migration lock after {wait}: "
                f"{movers.describe([tuple(row) for row in holders])}; nothing was changed"
            ) from None
    for name in ("lock_timeout", "statement_timeout", "client_connection_check_interval"):
        _set_session(connection, name, name)
    connection.exec_driver_sql(session.OWN_SETTINGS_SQL)  # READ COMMITTED, row_security off: reserve.schema.session
    connection.commit()


def _failing_step(url: URL, start: str | None) -> tuple[str | None, str | None]:
    """(revision, direction) of the step a failed run stopped in: the first step of its plan (from ``start`` to
    Alembic's revision argument) that alembic_version, read again, does not reflect."""
    try:
        target = revisions.resolve(context.get_revision_argument() or "head", start)
    except revisions.UnknownRevision:
        return None, None
    now = failures.diagnoser(url)(revisions.current_revision)
    return revisions.failing_step(start, target, now)


def _where_now(url: URL) -> str:
    diagnose = failures.diagnoser(url)
    recorded = diagnose(revisions.current_revision)
    if recorded is None and diagnose(lambda conn: True) is None:
        return "could not reconnect to see where the database stands: run `reserve verify`"
    swap = diagnose(swap_state.read)
    if swap is not None:
        return (f"the failed step's own transaction was rolled back; alembic_version names {recorded or 'no revision'} "
                f"and the online swap's committed phases stay (now: {swap.phase}): rerun the same command to "
                "resume (`reserve verify` says what is left)")
    return (f"its transaction was rolled back: alembic_version names {recorded or 'no revision'} "
            "(`reserve verify` checks the catalog)")


def _explain(error: BaseException, revision: str | None, direction: str | None, url: URL, pid: int | None,
             trace: locktrace.LockTrace | None) -> str:
    action = f"{direction} {revision}" if revision else "reading alembic_version"
    if trace is not None:
        trace.fail(action, revision, direction)
    try:
        wanted = dict(locks.declared(revision or "", direction or "", options.SwapOptions.from_x_options().method).tables)
    except KeyError:
        wanted = {}
    return db.scrub(failures.message(action, error, wanted=wanted, diagnose=failures.diagnoser(url),
                                     where_now=_where_now(url), exclude=(pid,) if pid else ()), url)


def _lock_trace() -> tuple[locktrace.LockTrace | None, Path | None]:
    """The trace a caller passed in (the rehearsal), or one for ``-x lock_trace=FILE``."""
    passed = config.attributes.get("lock_trace")
    target = options.x_option("lock_trace", "")
    method = options.SwapOptions.from_x_options().method
    if passed is not None:
        passed.method = method
        return passed, Path(target) if target else None
    return (locktrace.LockTrace(method), Path(target)) if target else (None, None)


def run_migrations_online() -> None:
    """Apply revisions to the database of DATABASE_URL, one transaction each."""
    options.check_x_options(offline=False)
    url = _url()
    trace, trace_file = _lock_trace()
    with _connect(url) as connection:
        pid: int | None = connection.connection.driver_connection.info.backend_pid
        _take_migration_lock(connection)
        callbacks: list[Any] = []
        start: str | None = None
        if trace is not None:
            trace.attach(connection)
            callbacks.append(trace.on_version_apply)
        try:
            context.configure(connection=connection, transaction_per_migration=True, on_version_apply=callbacks)
            start = context.get_context().get_current_revision()
            with context.begin_transaction():
                context.run_migrations()
        except (SQLAlchemyError, psycopg.Error, KeyboardInterrupt) as exc:
            # SQLAlchemy may raise a second error while unwinding a transaction the first one broke:
            # the message is about the database error behind it.
            error = failures.find_database_error(exc)
            if error is None:
                raise
            if not connection.closed and not connection.invalidated:
                try:
                    connection.rollback()  # release the step's locks before looking at who else holds some
                except SQLAlchemyError:
                    pass
            revision, direction = _failing_step(url, start)
            if isinstance(error, KeyboardInterrupt):
                raise CommandError(f"{direction or 'the run'} {revision or ''} interrupted (Ctrl-C). "
                                   f"{_where_now(url)}") from None
            raise CommandError(_explain(error, revision, direction, url, pid, trace)) from None
        finally:
            if trace is not None:
                trace.detach(connection)
                if trace_file is not None:
                    trace_file.write_text(trace.render(), encoding="utf-8")
            if not connection.closed and not connection.invalidated:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                connection.commit()


def _run() -> None:
    try:
        run_migrations_offline() if context.is_offline_mode() else run_migrations_online()
    except options.UnknownXOption as exc:
        if config.cmd_opts is None:  # run in-process (the rehearsal, the tests): the caller gets the error
            raise
        print(f"FAILED: {exc}", file=sys.stderr)  # the `alembic` command: a usage error, exit 2 (README)
        raise SystemExit(2) from None


_run()
