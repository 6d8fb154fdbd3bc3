"""Shared mechanics for the revisions in ``alembic/versions``.

Revisions stay short and declarative; everything they have in common lives
here: running packaged SQL (online and offline alike), installing a function
version, taking the ACCESS EXCLUSIVE lock on a busy table with a bounded
wait, archiving a table instead of dropping its rows, and reading ``-x``
options.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from reserve import catalog, guards, sql

log = logging.getLogger("reserve.migration")

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


def x_option(name: str, default: str) -> str:
    """An ``alembic -x name=value`` option, or its default."""
    return context.get_x_argument(as_dictionary=True).get(name, default)


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


# The tables each revision locks ACCESS EXCLUSIVE (with lock_exclusively), by revision:
# the revisions lock them, and `reserve preflight` names whoever holds a lock on them.
EXCLUSIVE_LOCKS: dict[str, tuple[str, ...]] = {
    "0003b_tenant_policies": (
        "public.allocations", "public.booking_assignment_idempotency", "public.booking_confirmation_results",
        "public.booking_table_assignments", "public.bookings", "public.capacity_outbox",
        "public.confirmation_cache_events", "public.feature_flag_overrides", "public.table_holds",
        "public.table_inventory",
    ),
    "0004_allocations_no_overlap": (guards.TABLE,),
}


def lock_exclusively(table: str, policy: LockPolicy) -> None:
    """Take ACCESS EXCLUSIVE on ``table`` for the rest of the revision's transaction.

    Each attempt waits at most ``policy.lock_timeout``; a failed attempt is
    rolled back to a savepoint (so nothing else is released) and retried
    after a pause. When every attempt fails the revision aborts with the
    database unchanged. Offline, the script carries the same bounded wait
    without retries: the operator reruns it.
    """
    timeout = sa.text("SELECT set_config('lock_timeout', :t, true)").bindparams(t=policy.lock_timeout)
    if context.is_offline_mode():
        op.execute(f"SET LOCAL lock_timeout = '{policy.lock_timeout}'")
        op.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        return
    conn = op.get_bind()
    for attempt in range(1, policy.attempts + 1):
        savepoint = conn.begin_nested()
        try:
            conn.execute(timeout)
            conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != "55P03":
                raise
            log.warning(
                "lock on %s not granted within %s (attempt %d/%d): another transaction holds it",
                table, policy.lock_timeout, attempt, policy.attempts,
            )
            if attempt < policy.attempts:
                time.sleep(policy.pause_s)
            continue
        savepoint.commit()
        log.info("ACCESS EXCLUSIVE lock on %s taken (attempt %d/%d)", table, attempt, policy.attempts)
        return
    raise CommandError(
        f"could not lock {table} after {policy.attempts} attempts of {policy.lock_timeout}: "
        "a long transaction holds a lock on it (run `reserve preflight` to see it). "
        "Nothing was changed; rerun when it has finished, or raise -x swap_lock_attempts."
    )


def lock_tables_of(revision: str) -> None:
    """Take every ACCESS EXCLUSIVE lock ``revision`` declares in ``EXCLUSIVE_LOCKS``, in one bounded LOCK TABLE."""
    lock_exclusively(", ".join(EXCLUSIVE_LOCKS[revision]), LockPolicy.from_x_options())


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


def _driver_connection():
    """The psycopg connection under Alembic's, in the revision's own transaction."""
    return op.get_bind().connection.driver_connection


def guard_in_place(guard: guards.Guard) -> bool:
    """Online: does the catalog prove ``guard`` holds? Offline there is no catalog: False."""
    return not context.is_offline_mode() and guards.is_in_place(_driver_connection(), guard)


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
    pairs = guards.find_violations(_driver_connection(), guard)
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


def prebuild_index_concurrently(name: str, create_sql: Callable[[str], str]) -> str:
    """Build index ``name`` under a pending name, concurrently, before the revision takes its heavy lock.

    Writers are not blocked, and the heavy lock is not lengthened by the
    build: under the lock, ``put_index_in_place`` only renames it. A run
    interrupted before the rename leaves only a ``reserve_pending_*`` index
    (valid or not), which is not part of any revision's schema; the next run
    drops it and builds it again, so a plain rerun always converges.
    """
    pending = f"{catalog.PENDING_INDEX_PREFIX}{name}"[:63]
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS public.{pending}")
        op.execute(create_sql(pending))
    return pending


def put_index_in_place(pending: str, name: str) -> None:
    """Give a prebuilt index its real name (a catalog update: instant)."""
    op.execute(f"ALTER INDEX public.{pending} RENAME TO {name}")
