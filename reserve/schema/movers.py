"""One lock for everyone who moves the schema or the online swap: `alembic` and every `reserve swap` command
that changes something.

The lock is the session-level advisory lock ``locks.MIGRATION_LOCK_KEY`` that
alembic/env.py holds for a whole run. `reserve swap finish` and `reserve swap
abort` take the same one, so that no command acts on a reading of the swap's
state that another is about to make stale (a finish racing a rollback once
emptied the table the rollback then made live). A second mover waits a
bounded time, then gives up naming the holder, with nothing changed.
`reserve swap status` takes nothing; `reserve swap follow` takes nothing
either: it only replays the change log, under the replay's own lock, which
every phase change takes before it moves anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from alembic.util import CommandError

from reserve.schema.locks import MIGRATION_LOCK_KEY

# Who holds the movers' lock in this database (advisory locks are per database): pid, application, since when.
HOLDERS_SQL = (
    "SELECT a.pid, COALESCE(NULLIF(a.application_name, ''), 'no application_name'), "
    "       to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"  AND ((l.classid::bigint << 32) | l.objid::bigint) = {MIGRATION_LOCK_KEY} AND a.pid <> pg_backend_pid()"
)


class MoverBusy(CommandError):
    """Another run holds the movers' lock after the bounded wait: nothing was changed (exit 1)."""


def describe(holders: list[tuple[Any, ...]]) -> str:
    """The holders as an operator reads them: who to ask, or what to wait for."""
    if not holders:
        return "a run that has ended since"
    return ", ".join(f"pid {pid} ({application}, connected since {since} UTC)" for pid, application, since in holders)


@contextmanager
def held(conn: psycopg.Connection[Any], *, wait_s: float, action: str) -> Iterator[None]:
    """Hold the movers' lock on ``conn`` (autocommit) for the block; wait at most ``wait_s`` seconds for it, then
    MoverBusy naming the holder. Released at the end of the block (and by the server if the session dies)."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()[0]:
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(wait_s * 1000))}ms",))
                conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            holders = conn.execute(HOLDERS_SQL).fetchall()
            raise MoverBusy(f"{action}: another run is moving the schema or the online swap: {describe(holders)} "
                            f"still holds the migration lock after {wait_s:g}s; nothing was changed. Run it again "
                            "once that run has ended (--wait SECONDS waits longer).") from None
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
