"""Shared mechanics for the revisions in ``alembic/versions``.

Revisions stay short and declarative; everything they have in common lives
here: running packaged SQL (online and offline alike), installing a function
version, taking the locks a revision declares (reserve.schema.locks) with a bounded
wait, archiving a table instead of dropping its rows, building an index
concurrently after a commit, and reading ``-x`` options and session settings.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from reserve import sql
from reserve.schema import guards, locks, revisions
from reserve.schema.index_build import build_index_after_commit  # noqa: F401 (for the revisions)
from reserve.schema.options import LockPolicy, SwapOptions, effective_swap_method, session_setting, x_option
from reserve.schema.session import AlembicSession, LockGiveUp, take  # noqa: F401 (LockGiveUp: for callers)
from reserve.schema.swap import online, teardown
from reserve.schema.swap import state as swap_state

SWAP_REVISION = revisions.SWAP_REVISION

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


def take_locks(revision: str, direction: str, method: str = "online") -> None:
    """Take every lock ``revision`` declares for ``direction`` (reserve.schema.locks.DECLARED), before anything else.

    All of them at once, each attempt waiting at most ``-x swap_lock_timeout``
    (2s), with bounded retries (reserve.schema.session.take): afterwards no
    statement of the revision waits in a lock queue; when every attempt fails
    the revision stops with the database unchanged, naming the sessions in the
    way. While an online swap of allocations is in flight, every other
    revision refuses (reserve.schema.swap). Offline, the script carries the
    same bounded wait without retries. ``method``: the swap's (only 0004 has two); its locked method takes
    its locks here, its online method phase by phase (reserve.schema.swap).
    """
    if not context.is_offline_mode() and revision != SWAP_REVISION:
        _drop_retired_table(f"{direction} {revision}")
        swap_state.refuse_other_revisions(AlembicSession(), f"{direction} {revision}")
    wanted = locks.declared(revision, direction, method)
    if not wanted.tables:
        return
    if context.is_offline_mode():
        policy = LockPolicy.from_x_options()
        op.execute(f"SET LOCAL lock_timeout = '{policy.lock_timeout}'")
        for mode, tables in wanted.groups():
            present = [t for t in tables if t.startswith("public.")]  # archived tables may be absent
            if present:
                op.execute(f"LOCK TABLE {', '.join(present)} IN {mode} MODE")
        op.execute(f"SET LOCAL lock_timeout = '{session_setting('lock_timeout')}'")
        return
    take(AlembicSession(), wanted.tables, action=f"{direction} {revision}",
         restore_lock_timeout=session_setting("lock_timeout"))


def _drop_retired_table(action: str) -> None:
    """A rollback that could not drop the table it replaced, or an interrupted `reserve swap finish`, left it
    retired; drop it now (bounded), before this revision's own transaction does anything (the drop commits on
    its own)."""
    found = swap_state.read(AlembicSession())
    if found is not None and found.phase in swap_state.DROPPABLE["drop"]:
        with op.get_context().autocommit_block():
            teardown.drop_retired(AlembicSession(), action=f"{action}: dropping the table an earlier run left")


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


def swap_method() -> str:
    """``online`` (the default) or ``locked`` (``-x swap_method=locked``). Not told, an online swap in flight or
    its open window continues online (`alembic downgrade -1` in the window is the exchange back). Offline scripts
    always carry the locked method: the online one commits in many steps and resumes from the database's own
    state, which a script for psql cannot do; the script says so in a comment."""
    if context.is_offline_mode():
        op.execute("-- 0004_allocations_no_overlap: an offline script uses the locked method (ACCESS EXCLUSIVE "
                   "while the guard is built); `alembic upgrade head` online uses the online method")
        return "locked"
    told = SwapOptions.from_x_options().method if x_option("swap_method", "") else None
    return effective_swap_method(told, swap_state.read(AlembicSession()) is not None)


def swap_online(revision: str, direction: str) -> None:
    """Run, or resume, the online swap (reserve.schema.swap.online): its phases commit on their own."""
    with op.get_context().autocommit_block():
        done = online.run(AlembicSession(), direction, new_guard(), action=f"{direction} {revision}")
    log.info("%s", done)


def swap_window_open() -> bool:
    """Online: is an online upgrade's window open (the previous table kept in step)?"""
    found = None if context.is_offline_mode() else swap_state.read(AlembicSession())
    return found is not None and found.phase == swap_state.WINDOW


def refuse_while_swapping(action: str) -> None:
    """The locked method cannot run while the online swap's machinery exists (it would leave it dangling)."""
    found = None if context.is_offline_mode() else swap_state.read(AlembicSession())
    if found is not None:
        raise CommandError(
            f"{action}: -x swap_method=locked cannot run while an online swap's "
            f"{'window is open' if found.phase == swap_state.WINDOW else 'machinery is in flight'} "
            f"(phase: {found.phase}); run without it, or close the window first with `reserve swap finish`.")


def guard_in_place(guard: guards.Guard) -> bool:
    """Online: does the catalog prove ``guard`` holds? Offline there is no catalog: False."""
    return not context.is_offline_mode() and guards.is_in_place(AlembicSession(), guard)


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
    found = [row[0] for row in AlembicSession().execute(query).fetchall()]
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


