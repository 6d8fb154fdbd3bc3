"""Shared mechanics for the revisions in ``alembic/versions``.

Revisions stay short and declarative; everything they have in common lives
here: running packaged SQL (online and offline alike), installing a function
version, taking the locks a revision declares (reserve.schema.locks) with a bounded
wait, archiving a table instead of dropping its rows, building an index
concurrently after a commit, and reading ``-x`` options and session settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from reserve import sql
from reserve.schema import guards, locks
from reserve.schema.index_build import build_index_after_commit  # noqa: F401 (for the revisions)
from reserve.schema.options import LockPolicy, session_setting

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


def new_guard() -> guards.Guard:
    """The guard the swap installs: ``guards.NEW_GUARD`` as shipped, unless the caller of this one Alembic run
    passed another in the config's attributes (the benchmark measures a proposed key order through the real
    revision that way, explicitly, instead of replacing the shipped definition for everyone)."""
    return context.config.attributes.get("new_guard") or guards.NEW_GUARD


def guard_in_place(guard: guards.Guard) -> bool:
    """Online: does the catalog prove ``guard`` holds? Offline there is no catalog: False."""
    return not context.is_offline_mode() and guards.is_in_place(Bind(), guard)


def refuse_rows(query: str, refusal: str, *, sqlstate: str, remedy: str) -> None:
    """Stop before anything is changed when ``query`` returns rows (one text column naming each), listing them.

    The check every revision makes before a change that existing data could
    break. Online it runs here and aborts with a CommandError; offline the
    script carries the same check as a DO block that raises ``sqlstate`` with
    the same list.
    """
    if context.is_offline_mode():
        execute(f"""
DO $check$
DECLARE
  found text;
BEGIN
  SELECT string_agg(r, ', ') INTO found FROM ({query}) AS bad(r);
  IF found IS NOT NULL THEN
    RAISE EXCEPTION '{refusal}: %', found USING ERRCODE = '{sqlstate}';
  END IF;
END
$check$""")
        return
    found = [row[0] for row in Bind().execute(query).fetchall()]
    if found:
        raise CommandError(f"{refusal}: {', '.join(found)}. Nothing was changed; {remedy}")


def refuse_violations(guard: guards.Guard, action: str) -> None:
    """Stop before anything is changed when rows would break ``guard``, naming them (at most 20 pairs)."""
    refuse_rows(f"SELECT v.a::text || ' & ' || v.b::text FROM ({guard.violations_sql()}) AS v(a, b)",
                f"cannot {action}: pairs of allocations would break {guard.name}", sqlstate="23P01",
                remedy="resolve these allocations first.")


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


