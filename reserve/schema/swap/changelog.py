"""The change log: every write to public.allocations recorded by id, replayed into the shadow by the swap.

The capture (reserve/sql/functions/swap_capture) is two triggers on the live
table, created ENABLE ALWAYS, that append the written row's id to
``reserve_swap.log`` in the writer's transaction and do nothing else. The
replay (reserve/sql/functions/swap_replay) runs in its own READ COMMITTED
transactions: it takes a batch of log rows and makes the shadow's version of
each id equal to the live table's committed version, so that it is correct
whatever the writer's isolation level; what the shadow's guard refuses is
recorded in ``reserve_swap.conflicts``. The swap replays between its phases
and under the exchange's lock; in the window `reserve swap follow` (or the
pg_cron job) keeps the previous table in step.

Writes that fire no trigger (an operator's ``DISABLE TRIGGER``) cannot be
logged: ``queue_differences`` compares the two tables row by row before each
exchange, and the exchange refuses while the capture is not enabled as
installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reserve import sql
from reserve.schema.swap.state import CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER, LIVE, LOG, REPLAY_LOCK, SHADOW

REPLAY_BATCH = 10_000  # log rows per replay transaction
FUNCTIONS = {"swap_capture": "v1", "swap_replay": "v2"}  # reserve/sql/functions/<name>/<version>.sql


def machinery_sql() -> str:
    """The schema, the state row, the log and the conflicts table."""
    return sql.read("schema/swap_machinery.sql")


def function_sql() -> list[str]:
    return [sql.function_sql(name, version) for name, version in FUNCTIONS.items()]


def install(table: str = LIVE) -> list[str]:
    """The capture on ``table``: it fires for every session, replica-role ones included."""
    return [
        f"CREATE TRIGGER {CAPTURE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION reserve_swap.capture()",
        f"CREATE TRIGGER {CAPTURE_TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION reserve_swap.capture()",
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {CAPTURE_TRIGGER}",
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {CAPTURE_TRUNCATE_TRIGGER}",
    ]


def remove(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {CAPTURE_TRIGGER} ON {table}",
            f"DROP TRIGGER IF EXISTS {CAPTURE_TRUNCATE_TRIGGER} ON {table}"]


def installed_on(session: Any, table: str = LIVE) -> bool:
    return session.execute("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s)",
                           (table, CAPTURE_TRIGGER)).fetchone()[0]


def not_capturing(session: Any, table: str = LIVE) -> list[str]:
    """The capture's triggers on ``table`` that are missing or not ENABLE ALWAYS (an operator changed them):
    while any is, writes may go unlogged."""
    enabled = dict(session.execute(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname IN (%s, %s)",
        (table, CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER)).fetchall())
    states = {"O": "enabled only for origin sessions", "D": "disabled", "R": "enabled only for replica sessions"}
    return [f"trigger {name} on {table} is {states.get(enabled[name], 'changed') if name in enabled else 'missing'}"
            for name in (CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER) if enabled.get(name) != "A"]


# The replay's transaction-level advisory lock, and who holds it in this database (advisory locks are per
# database; a bigint key shows in pg_locks as classid = its high half, objid = its low half).
_REPLAY_KEY = f"hashtext('{REPLAY_LOCK}')::bigint"
_PREEMPT = (
    "SELECT count(pg_cancel_backend(l.pid)) FROM pg_locks l "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid <> pg_backend_pid() "
    "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"  AND ((l.classid::bigint << 32) | l.objid::bigint) = {_REPLAY_KEY}"
)


def preempt_followers(session: Any) -> None:
    """Cancel whoever replays now (a follower: a mover holds the replay's lock only in its own session): its
    batch rolls back whole, its log rows stay for the next replay."""
    session.execute(_PREEMPT)


def take_replay_lock(session: Any) -> None:
    """For a mover (alembic's phases, `reserve swap finish`), in its transaction: the replay's lock, now. A
    follower that holds it (the pg_cron job, `reserve swap follow`) is cancelled rather than waited for: its
    batch rolls back whole and its log rows stay for the next replay, so nothing is lost, and housekeeping
    never makes the emergency rollback wait. The wait that remains (for the cancelled batch to roll back) is
    bounded by the session's lock_timeout."""
    if session.execute(f"SELECT pg_try_advisory_xact_lock({_REPLAY_KEY})").fetchone()[0]:
        return
    preempt_followers(session)
    session.execute(f"SELECT pg_advisory_xact_lock({_REPLAY_KEY})")


def replay(session: Any, max_rows: int = REPLAY_BATCH, *, follower: bool = False) -> int | None:
    """One batch, in its own transaction; the log rows it consumed. A mover preempts any follower
    (take_replay_lock); a ``follower`` never waits: None when another replayer holds the lock (its turn is
    skipped)."""
    with session.transaction():
        if not follower:
            take_replay_lock(session)
        return session.execute("SELECT reserve_swap.replay(%s, %s)", (max_rows, not follower)).fetchone()[0]


def tail_fits(session: Any, cap: int) -> bool:
    """Whether the log holds at most ``cap`` rows (counting no further than one past it): what the exchange may
    replay under its lock."""
    return session.execute(f"SELECT count(*) <= %s FROM (SELECT 1 FROM {LOG} LIMIT %s + 1) tail",
                           (cap, cap)).fetchone()[0]


def replay_in(session: Any, max_rows: int = REPLAY_BATCH) -> int:
    """Replay the whole log inside the caller's transaction (the exchange's, under its lock: nobody can append;
    the caller has checked with tail_fits that it is short)."""
    total = 0
    while True:
        consumed = session.execute("SELECT reserve_swap.replay(%s)", (max_rows,)).fetchone()[0]
        total += consumed
        if consumed < max_rows:
            return total


def replay_until(session: Any, tail_rows: int = 0, max_rows: int = REPLAY_BATCH, *, follower: bool = False) -> int:
    """Replay batch after batch until at most ``tail_rows`` log rows are left (as counted then); the rows
    consumed. Each batch commits on its own, so that writers never wait for the replay. A ``follower`` stops
    at the first batch another replayer's lock makes it skip."""
    total = 0
    while True:
        consumed = replay(session, max_rows, follower=follower)
        if consumed is None:
            return total
        total += consumed
        if consumed < max_rows and depth(session).rows <= tail_rows:
            return total


@dataclass(frozen=True)
class Depth:
    """What the replay has still to do: log rows, and how long the oldest of them has waited."""

    rows: int
    lag_s: float


def depth(session: Any) -> Depth:
    rows, lag = session.execute(f"SELECT count(*), COALESCE(extract(epoch FROM clock_timestamp() - min(logged_at)), 0)"
                                f"::float8 FROM {LOG}").fetchone()
    return Depth(rows, round(lag, 3))


def queue_differences(session: Any) -> int:
    """Compare the live table and the shadow row by row (a full join on id, each pair of rows compared by
    their binary images, ``*=``, as REFRESH MATERIALIZED VIEW CONCURRENTLY does) and log every id that
    differs, for the replay to settle: what a disabled capture let slip, or anything else. Binary images need
    no text form and no hash (a sixth of the time of md5 over each row's text), and are stricter than either:
    a copy the replay made is binary equal to its source. Read-only on both tables; the ids queued."""
    with session.transaction():
        return session.execute(
            f"WITH differ AS (SELECT COALESCE(l.id, s.id) AS id FROM {LIVE} l FULL JOIN {SHADOW} s ON s.id = l.id "
            "WHERE l.id IS NULL OR s.id IS NULL OR NOT l OPERATOR(pg_catalog.*=) s), "
            "queued AS (INSERT INTO reserve_swap.log (allocation_id) SELECT id FROM differ RETURNING 1) "
            "SELECT count(*) FROM queued").fetchone()[0]


CRON_JOB = "reserve-swap-replay"
# The job's command: READ COMMITTED whatever the database's default (the replay refuses anything else), and a
# follower's turn (skipped while a mover or another replayer holds the replay's lock).
CRON_COMMAND = ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; "
                f"SELECT reserve_swap.replay({REPLAY_BATCH * 10}, false)")


def cron_version(session: Any) -> str | None:
    """pg_cron's version when it is installed in this database (the scheduler the retention job uses), else None."""
    row = session.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    return row[0] if row else None


def cron_schedule(version: str) -> str:
    """Every 5 seconds where pg_cron takes seconds (1.5 and later), else every minute."""
    major, minor = (int(part) for part in version.split("-")[0].split(".")[:2])
    return "5 seconds" if (major, minor) >= (1, 5) else "* * * * *"


def schedule_replay(session: Any) -> str | None:
    """In the caller's transaction: a pg_cron job that replays the log on its own schedule, where pg_cron is
    installed; the schedule, or None (then `reserve swap follow` is the replayer)."""
    version = cron_version(session)
    if version is None:
        return None
    every = cron_schedule(version)
    session.execute("SELECT cron.schedule(%s, %s, %s)", (CRON_JOB, every, CRON_COMMAND))
    return every


def unschedule_replay(session: Any) -> None:
    """In the caller's transaction (retiring the table that left, or dropping the machinery): the job goes with what
    it replays into."""
    if cron_version(session) is not None:
        session.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (CRON_JOB,))
