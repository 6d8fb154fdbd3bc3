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
- Offline (``--sql``) emits a script for ``psql -v ON_ERROR_STOP=1`` with the
  same timeouts and the same advisory lock.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import DBAPIError

from reserve import db, migration

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("reserve.env")

# pg_advisory_lock key shared by every run of this project. Arbitrary, fixed forever.
MIGRATION_LOCK_KEY = 7_265_736_572_766_501
SESSION_DEFAULTS = {
    "lock_timeout": "5s",
    "statement_timeout": "15min",
    "migration_lock_wait": "10min",
    # A client killed mid-build (deploy job timeout, SIGKILL) would otherwise leave its backend
    # building the guard under ACCESS EXCLUSIVE until the statement ends: up to a minute at 1M rows.
    # With this the server notices the dead client within a second and rolls back (PostgreSQL 14+).
    "client_connection_check_interval": "1s",
}


def session_setting(name: str) -> str:
    """A session setting for this run: ``-x name=value`` or the project default."""
    return context.get_x_argument(as_dictionary=True).get(name, SESSION_DEFAULTS[name])


def _check_x_options(offline: bool) -> None:
    """Fail on a bad ``-x`` value before any revision runs, so a typo changes nothing (the swap options
    are read only by 0004, which may come after other revisions, or after its downgrade's index build).
    Online the server checks the session settings; offline they go into the script unchecked, so here."""
    migration.LockPolicy.from_x_options()
    if offline:
        for name, default in SESSION_DEFAULTS.items():
            migration.duration_option(name, default)


def run_migrations_offline() -> None:
    """Write the SQL script for a DBA to review and apply with psql."""
    _check_x_options(offline=True)
    context.configure(
        dialect_name="postgresql",
        dialect_opts={"paramstyle": "named"},
        literal_binds=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{session_setting('migration_lock_wait')}'")
        context.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
        context.execute(f"SET lock_timeout = '{session_setting('lock_timeout')}'")
        context.execute(f"SET statement_timeout = '{session_setting('statement_timeout')}'")
        context.execute(f"SET client_connection_check_interval = '{session_setting('client_connection_check_interval')}'")
        context.run_migrations()
        context.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")


def _connect():
    try:
        url = db.sqlalchemy_url(config.attributes.get("database_url"))
    except db.DatabaseUrlError as exc:
        raise CommandError(str(exc)) from None
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": 10, "application_name": "reserve-migrations"},
    )
    try:
        return engine.connect()
    except DBAPIError as exc:
        reason = db.scrub(" ".join(line.strip() for line in str(exc.orig).strip().splitlines()), url)
        raise CommandError(f"cannot connect to {db.masked(url)}: {reason}") from None


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
            raise CommandError(
                f"another migration run still holds the migration lock after {wait}; nothing was changed"
            ) from None
    for name in ("lock_timeout", "statement_timeout", "client_connection_check_interval"):
        _set_session(connection, name, name)
    connection.commit()


def run_migrations_online() -> None:
    """Apply revisions to the database of DATABASE_URL, one transaction each."""
    _check_x_options(offline=False)
    with _connect() as connection:
        _take_migration_lock(connection)
        try:
            context.configure(connection=connection, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if not connection.closed and not connection.invalidated:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
