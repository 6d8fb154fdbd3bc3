"""Shared mechanics for the revisions in ``alembic/versions``.

Revisions stay short and declarative; everything they have in common lives
here: running packaged SQL (online and offline alike), installing a function
version, taking the locks a revision declares (reserve.schema.locks) with a bounded
wait, archiving a table instead of dropping its rows, building an index
concurrently after a commit, and reading ``-x`` options and session settings.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from reserve import db, sql
from reserve.schema import catalog, failures, guards, locks

log = logging.getLogger("reserve.schema.migration")

ARCHIVE_SCHEMA = "reserve_archive"


def execute(statement: str) -> None:
    """Run raw SQL through Alembic, online or into the offline script.

    Colons are escaped so that SQLAlchemy never mistakes ``':hold'`` or
    ``'18:00'`` in a function body for a bind parameter.
    """
    op.execute(sa.text(statement.replace(":", "\\:")))


def run_schema_script(name: str) -> None:
    """Run ``reserve/sql/schema/<name>.sql``."""
    execute(sql.read(f"schema/{name}.sql"))


def install_function(name: str, version: str) -> None:
    """Install ``version`` of function ``name`` from its released SQL file."""
    execute(sql.function_sql(name, version))


# Session settings of every run, with their defaults (``-x name=value`` overrides each one). env.py sets
# them on the migrating session; a step that changes one for a single statement puts it back from here.
SESSION_DEFAULTS = {
    "lock_timeout": "5s",
    "statement_timeout": "15min",
    "migration_lock_wait": "10min",
    # A client killed mid-build (deploy job timeout, SIGKILL) would otherwise leave its backend
    # building the guard under ACCESS EXCLUSIVE until the statement ends: up to a minute at 1M rows.
    # With this the server notices the dead client within a second and rolls back (PostgreSQL 14+).
    "client_connection_check_interval": "1s",
}
# How long the rollback's concurrent index build may wait for other transactions once the guard is back
# (it blocks no booking meanwhile); 0 waits as long as it takes.
INDEX_BUILD_WAIT = "1h"


def x_option(name: str, default: str) -> str:
    """An ``alembic -x name=value`` option, or its default: the one reader of ``-x``."""
    return context.get_x_argument(as_dictionary=True).get(name, default)


def session_setting(name: str) -> str:
    """A session setting of this run (``SESSION_DEFAULTS``), as given with ``-x`` or by default."""
    return x_option(name, SESSION_DEFAULTS[name])


def check_x_options(*, offline: bool) -> None:
    """Fail on a bad ``-x`` value before any revision runs, so that a typo changes nothing.

    Some options are read only by a late step (the lock options by the first
    revision that locks, the index wait by the rollback of the swap): checked
    here, up front. Online the server checks the session settings itself when
    env.py sets them; offline they go into the script unchecked, so here.
    """
    LockPolicy.from_x_options()
    duration_option("index_build_wait", INDEX_BUILD_WAIT)
    if offline:
        for name, default in SESSION_DEFAULTS.items():
            duration_option(name, default)


@dataclass(frozen=True)
class LockPolicy:
    """How long one lock attempt may wait, and how often to try.

    Every waiting attempt makes readers of the table queue behind it, so each
    wait is short; the pauses between attempts let that queue drain.
    """

    lock_timeout: str = "2s"
    attempts: int = 5
    pause_s: float = 3.0

    @classmethod
    def from_x_options(cls) -> LockPolicy:
        """Read ``-x swap_lock_timeout=…``, ``-x swap_lock_attempts=…``, ``-x swap_lock_pause=…``.

        A bad value is a CommandError naming the option (env.py reads these before any revision runs,
        so a typo changes nothing).
        """
        default = cls()
        attempts = _number_option("swap_lock_attempts", default.attempts, int)
        pause_s = _number_option("swap_lock_pause", default.pause_s, float)
        if attempts < 1 or pause_s < 0:
            raise CommandError("swap_lock_attempts must be >= 1 and swap_lock_pause >= 0")
        return cls(duration_option("swap_lock_timeout", default.lock_timeout), attempts, pause_s)


def _number_option(name: str, default: float, kind: type) -> Any:
    value = x_option(name, str(default))
    try:
        return kind(value)
    except ValueError:
        raise CommandError(f"invalid -x {name}={value!r}: give a{'' if kind is int else ' decimal'} number, "
                           f"e.g. {default}") from None


# A PostgreSQL time setting: a number with an optional unit (lock_timeout = '2s', '500ms', '10min').
_DURATION = re.compile(r"\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*")


def duration_option(name: str, default: str) -> str:
    """An ``-x`` option holding a PostgreSQL duration; CommandError when it is not one."""
    value = x_option(name, default)
    if not _DURATION.fullmatch(value):
        raise CommandError(f"invalid -x {name}={value!r}: give a PostgreSQL duration, e.g. 2s, 500ms or 10min")
    return value


class Bind:
    """psycopg-style ``execute(sql, params)`` on Alembic's connection, in the revision's transaction.

    The checks the revisions share (reserve.schema.guards, reserve.schema.locks) take a
    psycopg-like connection; going through SQLAlchemy rather than around it
    keeps every statement visible to the lock trace.
    """

    def execute(self, query: str, params: Any = None) -> Any:
        if params is None:
            return op.get_bind().exec_driver_sql(query, execution_options={"no_parameters": True})
        return op.get_bind().exec_driver_sql(query, params)


class LockGiveUp(CommandError):
    """Every bounded attempt to take a revision's declared locks timed out; nothing was changed."""


def take_locks(revision: str, direction: str) -> None:
    """Take every lock ``revision`` declares for ``direction`` (reserve.schema.locks.DECLARED), before anything else.

    Each attempt waits at most ``-x swap_lock_timeout`` (2s) for all of them;
    a failed attempt is rolled back to a savepoint (releasing what it got, so
    no table stays locked while another is waited for), the sessions in the
    way are named in the log, and it is retried after a pause. When every
    attempt fails the revision stops with the database unchanged. Afterwards
    no statement of the revision waits in a lock queue. Tables that do not
    exist (an archived table that was never archived) are skipped. Offline,
    the script carries the same bounded wait without retries.
    """
    wanted = locks.declared(revision, direction)
    if not wanted.tables:
        return
    policy = LockPolicy.from_x_options()
    if context.is_offline_mode():
        op.execute(f"SET LOCAL lock_timeout = '{policy.lock_timeout}'")
        for mode, tables in wanted.groups():
            present = [t for t in tables if t.startswith("public.")]  # archived tables may be absent
            if present:
                op.execute(f"LOCK TABLE {', '.join(present)} IN {mode} MODE")
        op.execute(f"SET LOCAL lock_timeout = '{session_setting('lock_timeout')}'")
        return
    conn = op.get_bind()
    existing = set(conn.exec_driver_sql(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL", (list(wanted.tables),)).scalars())
    groups = [(mode, [t for t in tables if t in existing]) for mode, tables in wanted.groups()]
    groups = [(mode, tables) for mode, tables in groups if tables]
    present = {t: m for t, m in wanted.tables.items() if t in existing}
    names = ", ".join(sorted(present))
    in_the_way: list[locks.Holder] = []
    for attempt in range(1, policy.attempts + 1):
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)").bindparams(t=policy.lock_timeout))
            for mode, tables in groups:
                conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN {mode} MODE")
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != "55P03":
                raise
            in_the_way = locks.holders(Bind(), present)
            log.warning("locks on %s not granted within %s (attempt %d/%d): %s", names, policy.lock_timeout,
                        attempt, policy.attempts, "; ".join(h.describe() for h in in_the_way) or "the holder has gone")
            if attempt < policy.attempts:
                time.sleep(policy.pause_s)
            continue
        conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)").bindparams(t=session_setting("lock_timeout")))
        savepoint.commit()
        log.info("%s: %s taken (attempt %d/%d)", revision,
                 "; ".join(f"{mode} on {', '.join(tables)}" for mode, tables in groups), attempt, policy.attempts)
        return
    held_by = "; ".join(h.describe() for h in in_the_way) or "a transaction that has ended since"
    raise LockGiveUp(
        f"{direction} {revision}: could not lock {names} after {policy.attempts} attempts of {policy.lock_timeout} "
        f"(in the way: {held_by}). Nothing was changed; rerun when they have finished, or raise -x swap_lock_attempts."
    )


def protect_tenant_table(table: str, policy: str, privileges: str) -> None:
    """RLS on ``public.<table>``: service_role gets ``privileges`` on the rows of its tenant only.

    The one policy is scoped by require_restaurant_context() (42501 without a
    tenant); anon, authenticated and PUBLIC get nothing, whatever default
    privileges the server grants (Supabase grants them everything). Idempotent,
    so it also re-asserts the rules on a table brought back from the archive.
    """
    execute(f"ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY")
    execute(f'DROP POLICY IF EXISTS "{policy}" ON public.{table}')
    execute(f"""
CREATE POLICY "{policy}" ON public.{table}
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context())""")
    execute(f"REVOKE ALL ON public.{table} FROM PUBLIC, anon, authenticated")
    execute(f"GRANT {privileges} ON public.{table} TO service_role")


def archive_table(table: str) -> None:
    """Move ``public.<table>`` and its rows to the archive schema; drop it only when empty.

    The archive schema grants nothing to anyone, so archived rows are out of
    reach of anon, authenticated and service_role, and ``restore_table``
    brings the very same table (rows, keys, policies, grants) back.
    """
    execute(f"""
DO $archive$
BEGIN
  IF EXISTS (SELECT 1 FROM public.{table}) THEN
    CREATE SCHEMA IF NOT EXISTS {ARCHIVE_SCHEMA};
    REVOKE ALL ON SCHEMA {ARCHIVE_SCHEMA} FROM PUBLIC;
    ALTER TABLE public.{table} SET SCHEMA {ARCHIVE_SCHEMA};
    RAISE NOTICE 'public.{table} has rows: archived to {ARCHIVE_SCHEMA}.{table}';
  ELSE
    DROP TABLE public.{table};
  END IF;
END
$archive$""")


def restore_table(table: str) -> None:
    """Bring ``table`` back from the archive schema into ``public``, if it was archived."""
    execute(f"""
DO $restore$
BEGIN
  IF to_regclass('{ARCHIVE_SCHEMA}.{table}') IS NOT NULL THEN
    ALTER TABLE {ARCHIVE_SCHEMA}.{table} SET SCHEMA public;
    RAISE NOTICE '{ARCHIVE_SCHEMA}.{table} restored to public with its rows';
  END IF;
  IF to_regnamespace('{ARCHIVE_SCHEMA}') IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace('{ARCHIVE_SCHEMA}')) THEN
    DROP SCHEMA {ARCHIVE_SCHEMA};
  END IF;
END
$restore$""")


def guard_in_place(guard: guards.Guard) -> bool:
    """Online: does the catalog prove ``guard`` holds? Offline there is no catalog: False."""
    return not context.is_offline_mode() and guards.is_in_place(Bind(), guard)


def refuse_violations(guard: guards.Guard, action: str) -> None:
    """Stop before anything is changed when rows would break ``guard``, naming them.

    Online the check runs here and aborts with the conflicting allocation ids
    (at most 20 pairs); offline the script carries the same check as a DO
    block that raises 23P01 with the ids.
    """
    if context.is_offline_mode():
        execute(f"""
DO $check$
DECLARE
  pairs text;
BEGIN
  SELECT string_agg(v.a::text || ' & ' || v.b::text, ', ') INTO pairs
  FROM ({guard.violations_sql()}) AS v(a, b);
  IF pairs IS NOT NULL THEN
    RAISE EXCEPTION 'cannot {action}: allocations break {guard.name}: %', pairs USING ERRCODE = '23P01';
  END IF;
END
$check$""")
        return
    pairs = guards.find_violations(Bind(), guard)
    if pairs:
        listed = "; ".join(f"{a} & {b}" for a, b in pairs)
        raise CommandError(
            f"cannot {action}: {len(pairs)}{'+' if len(pairs) == 20 else ''} pair(s) of allocations "
            f"would break {guard.name}: {listed}. Nothing was changed; resolve these allocations first."
        )


def add_guard(guard: guards.Guard, action: str) -> None:
    """Add ``guard`` under the swap's lock; a row that breaks it fails the revision with a clear message.

    ``refuse_violations`` runs before the lock, so a row written between that
    check and the lock can still break the guard while PostgreSQL builds it.
    The revision's transaction rolls back whole either way. The ids are not
    looked up here, which would hold the lock through a scan of the table:
    the rerun's pre-check lists them, with no lock held.
    """
    try:
        op.execute(guard.add_sql())
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23P01":
            raise
        raise CommandError(
            f"cannot {action}: allocations written after the pre-check break {guard.name}. "
            "Nothing was changed; run the same command again: its pre-check lists the conflicting ids."
        ) from None


def build_index_after_commit(name: str, create_sql: Callable[[str], str], *, step: str, done: str) -> None:
    """Commit what the revision did so far, then build index ``name`` concurrently, blocking nobody.

    Why after the commit: CREATE INDEX CONCURRENTLY waits for every
    transaction of the database that holds an older snapshot (a report query,
    a REPEATABLE READ transaction, pg_dump), however unrelated; what the
    revision did before (``done``, e.g. a restored guard) must not wait with
    it. The build takes SHARE UPDATE EXCLUSIVE, which no read or write of the
    table conflicts with, so it may wait long: ``-x index_build_wait`` (1h;
    0 = as long as it takes) instead of the session's lock_timeout. Meanwhile
    the sessions it waits for are logged.

    Resumable: the index is built under a ``reserve_pending_`` name (outside
    every revision's catalog) and renamed at the end. A rerun keeps a valid
    pending index, drops an invalid one and builds again, and does nothing
    when the index is already in place. A failure here says that ``done`` is
    committed and that rerunning the same command finishes the index; until
    then ``reserve verify`` names the pending index.
    """
    pending = f"{catalog.PENDING_INDEX_PREFIX}{name}"[:63]
    wait = duration_option("index_build_wait", INDEX_BUILD_WAIT)
    if context.is_offline_mode():
        with op.get_context().autocommit_block():
            _set_session_timeouts(wait)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS public.{pending}")
            op.execute(create_sql(pending))
            op.execute(f"ALTER INDEX public.{pending} RENAME TO {name}")
            _set_session_timeouts(None)
        return
    bind = op.get_bind()
    url, pid = bind.engine.url, bind.connection.driver_connection.info.backend_pid
    try:
        with op.get_context().autocommit_block():
            state = dict(Bind().execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.oid IN (to_regclass(%s), to_regclass(%s))", (f"public.{name}", f"public.{pending}")).fetchall())
            if state.get(name):
                log.info("index %s is already in place", name)
                return
            log.info("%s; building index %s concurrently: it blocks no read or write, and waits up to %s for older "
                     "transactions (interrupting it is safe: rerun the same command to finish)", done, name,
                     wait if wait != "0" else "as long as it takes")
            _set_session_timeouts(wait)
            with _WaitReporter(url, pid, name):
                if state.get(pending) is False:
                    op.execute(f"DROP INDEX CONCURRENTLY public.{pending}")
                if not state.get(pending):
                    op.execute(create_sql(pending))
            op.execute(f"ALTER INDEX public.{pending} RENAME TO {name}")
            _set_session_timeouts(None)
    except sa.exc.SQLAlchemyError as exc:  # the block's own commit fails too once the connection is gone
        error = failures.find_database_error(exc)
        if error is None:
            raise
        raise CommandError(failures.message(
            f"{step}: the concurrent build of index {name}", error, wanted={guards.TABLE: "SHARE UPDATE EXCLUSIVE"},
            diagnose=failures.diagnoser(url), exclude=(pid,),
            where_now=f"{done}, and that is committed; alembic_version still names the revision. "
                      f"Rerun the same command to finish the index (`reserve verify` names it until then)",
        )) from None


def _set_session_timeouts(wait: str | None) -> None:
    """lock_timeout and statement_timeout: both ``wait`` for one long statement, or back to the run's settings."""
    for setting in ("lock_timeout", "statement_timeout"):
        value = wait if wait is not None else session_setting(setting)
        if context.is_offline_mode():
            op.execute(f"SET {setting} = '{value}'")
        else:
            op.get_bind().execute(sa.text("SELECT set_config(:n, :v, false)").bindparams(n=setting, v=value))


class _WaitReporter:
    """While a concurrent build runs, log every ``every_s`` what it is waiting for (pids and application names)."""

    def __init__(self, url: sa.URL, pid: int, index: str, every_s: float = 5.0) -> None:
        self.url = url
        self.pid = pid
        self.index = index
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-build-waits", daemon=True)

    def __enter__(self) -> _WaitReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with db.connect(self.url, autocommit=True) as conn:
                conn.execute("SET statement_timeout = '5s'")
                while not self._stop.wait(self.every_s):
                    phase = conn.execute("SELECT phase FROM pg_stat_progress_create_index WHERE pid = %s",
                                         (self.pid,)).fetchone()
                    waiting = conn.execute(
                        "SELECT a.pid, COALESCE(a.application_name, ''), "
                        "       round(extract(epoch FROM clock_timestamp() - a.xact_start))::int "
                        "FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids(%s)) ORDER BY a.xact_start",
                        (self.pid,)).fetchall()
                    if waiting:
                        log.info("index %s: %s; waiting for %s", self.index, phase[0] if phase else "building",
                                 ", ".join(f"pid {p} ({app or 'no application_name'}, open {age}s)" for p, app, age in waiting))
        except Exception as exc:  # a report, never a reason to fail the build
            log.debug("index build reporter stopped: %s", exc)
