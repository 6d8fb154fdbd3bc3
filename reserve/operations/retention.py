"""``reserve retention``: delete confirmation evidence older than a cutoff, in small batches.

The work is done by the SQL function ``purge_booking_confirmation_results``
(revision 0003a_operations), so a scheduler (pg_cron) and this command share
one implementation. It runs as the platform's maintenance role
(``reserve_maintenance``, revision 0003c_maintenance_role), never as a
venue's service_role: it deletes every venue's old evidence. The cutoff is fixed once, from the server's clock, when
the run starts; each batch is its own short transaction on an autocommit
connection; rows a running confirmation has locked are skipped, not waited
for. Running it again with the same cutoff deletes nothing.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import OK, WARN, Report, UsageError

FUNCTION = "purge_booking_confirmation_results"
MAINTENANCE_ROLE = "reserve_maintenance"
DEFAULT_BATCH_SIZE = 1000
class RetentionError(UsageError, ValueError):
    """Bad input (duration, batch size), or a database without the retention function."""


def cutoff(conn: psycopg.Connection[Any], older_than: str | timedelta) -> tuple[datetime, str]:
    """``now() - older_than`` on the server's clock, and the interval as PostgreSQL prints it.

    ``older_than`` is read by PostgreSQL's own interval input, the one grammar
    for durations here: 30d, 12h, 2w, 1d12h, '1 day 12 hours', P30D, 1 mon.
    RetentionError for anything it refuses, and for an age under one day (the
    function refuses those too: replays of a confirmation are served from its
    evidence, which must outlive any client's retries).
    """
    try:
        at, shown, positive, old_enough = conn.execute(
            "SELECT now() - i, i::text, i > interval '0', i >= interval '1 day' FROM (SELECT %s::interval AS i) v",
            (older_than,)).fetchone()
    except (psycopg.errors.InvalidDatetimeFormat, psycopg.errors.IntervalFieldOverflow,
            psycopg.errors.DatetimeFieldOverflow) as exc:
        raise RetentionError(f"invalid duration {older_than!r}: {exc.diag.message_primary}; give a PostgreSQL "
                             "interval, e.g. 30d, 12h, 2w or '1 day 12 hours'") from None
    if not positive:
        raise RetentionError(f"invalid duration {older_than!r}: it must be longer than zero")
    if not old_enough:
        raise RetentionError(f"--older-than {shown} is too short: evidence younger than a day is never purged "
                             "(a replayed confirmation is answered from it)")
    return at, shown


def purge(url: URL, older_than: str | timedelta, *, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False,
          pause_s: float = 0.0, max_batches: int | None = None) -> Report:
    """Delete (or, with ``dry_run``, count) evidence and cache events older than ``older_than``.

    Raises RetentionError for bad input (PostgreSQL reads the duration) or a database without the function,
    db.ConnectionFailed when the server cannot be reached (both exit 2 in the CLI).
    """
    if batch_size <= 0:
        raise RetentionError(f"batch size must be a positive number of rows, got {batch_size}")
    report = Report("retention")
    with db.connect(url, autocommit=True) as conn:
        until, shown = cutoff(conn, older_than)
        role = _take_maintenance_role(conn)
        report.facts.update({"database": db.masked(url), "role": role, "older_than": shown,
                             "cutoff": until.isoformat(), "batch_size": batch_size, "dry_run": dry_run})
        evidence = events = batches = 0
        more = True
        while more and (max_batches is None or batches < max_batches):
            evidence_rows, event_rows, more = _call(conn, until, batch_size, dry_run)
            batches += 1
            evidence += evidence_rows
            events += event_rows
            if dry_run or (more and evidence_rows == 0 and event_rows == 0):
                break  # a dry run counts everything at once; an empty batch means the rest is locked
            if more and pause_s:
                time.sleep(pause_s)
    report.facts.update({"batches": batches, "evidence_rows": evidence, "cache_event_rows": events})
    verb = "would delete" if dry_run else "deleted"
    detail = f"{verb} {evidence} evidence row(s) and {events} cache event(s) older than {until.isoformat()}"
    if dry_run:
        report.add("retention", OK, detail + " (dry run: nothing deleted)")
    elif more:
        report.add("retention", WARN, detail + f" in {batches} batch(es); rows older than the cutoff remain "
                   "(locked by running confirmations, or --max-batches reached): run it again")
    else:
        report.add("retention", OK, detail + f" in {batches} batch(es); none left")
    return report


def _take_maintenance_role(conn: psycopg.Connection[Any]) -> str:
    """Act as the maintenance role, to which 0003c_maintenance_role grants the purge, when this login may.

    The purge is SECURITY DEFINER and reaches every venue's evidence: it is
    platform work, never service_role's. Below 0003c (no such role yet) the
    purge runs as the login itself, which then needs EXECUTE on it.
    """
    member = conn.execute("SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                          (MAINTENANCE_ROLE,)).fetchone()
    if member and member[0]:
        conn.execute(f"SET ROLE {MAINTENANCE_ROLE}")
    return conn.execute("SELECT current_user").fetchone()[0]


def _call(conn: psycopg.Connection[Any], cutoff: datetime, batch_size: int, dry_run: bool) -> tuple[int, int, bool]:
    try:
        return conn.execute(f"SELECT * FROM public.{FUNCTION}(%s, %s, %s)", (cutoff, batch_size, dry_run)).fetchone()
    except psycopg.errors.UndefinedFunction:
        raise RetentionError(f"{FUNCTION} does not exist: upgrade this database to 0003a_operations or later "
                             "(`alembic upgrade head`)") from None
    except psycopg.errors.InvalidParameterValue as exc:
        raise RetentionError(exc.diag.message_primary or str(exc)) from None
