"""Building an index concurrently after the revision's work so far has committed, blocking nobody.

The swap's rollback restores the guard first and commits it; only then does
it build the redundant index, with CREATE INDEX CONCURRENTLY, which waits for
every older transaction of the database but blocks no read or write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

from reserve import db
from reserve.schema import catalog, failures, guards
from reserve.schema.options import INDEX_BUILD_WAIT, duration_option, session_setting

log = logging.getLogger("reserve.schema.migration")


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
            state = dict(op.get_bind().exec_driver_sql(
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
        if isinstance(error, KeyboardInterrupt):
            raise error from None  # env.py reports the interruption
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
