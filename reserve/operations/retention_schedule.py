"""``reserve retention --schedule / --unschedule``: retention run by pg_cron, inside the database.

One named job (``reserve-retention``), created or updated in place (pg_cron
replaces a job scheduled again under the same name), removed by
``--unschedule``; both idempotent. Each run is one batch of the same SQL
function ``reserve retention`` calls (``purge_booking_confirmation_results``),
as the maintenance role: the job runs as the login that scheduled it (a
member of ``reserve_maintenance``, as 0003c makes the migrating role), which
switches to that role first, so that the purge never runs as a venue's
``service_role``. pg_cron must be installed in this database (``CREATE
EXTENSION pg_cron``, with ``shared_preload_libraries = 'pg_cron'`` and
``cron.database_name`` naming it); otherwise a RetentionError (exit 2).
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.operations.retention import DEFAULT_BATCH_SIZE, FUNCTION, MAINTENANCE_ROLE, RetentionError, cutoff
from reserve.report import OK, Report

JOB = "reserve-retention"


def job_command(interval: str, batch_size: int) -> str:
    """What pg_cron runs: one batch, as the maintenance role, of evidence older than ``interval``."""
    return (f"SET ROLE {MAINTENANCE_ROLE}; SELECT * FROM public.{FUNCTION}(now() - interval '{interval}', "
            f"{int(batch_size)})")


def _require_pg_cron(conn: psycopg.Connection[Any]) -> None:
    if conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'").fetchone()[0] == 0:
        raise RetentionError("pg_cron is not installed in this database: `CREATE EXTENSION pg_cron` (with "
                             "shared_preload_libraries = 'pg_cron' and cron.database_name naming this database), "
                             "or run `reserve retention --older-than …` from your own scheduler")


def schedule(url: URL, cron_schedule: str, older_than: str = "30d", *,
             batch_size: int = DEFAULT_BATCH_SIZE) -> Report:
    """Create or update the job; RetentionError (exit 2) for bad input or a database without pg_cron."""
    if batch_size <= 0:
        raise RetentionError(f"batch size must be a positive number of rows, got {batch_size}")
    report = Report("retention schedule")
    with db.connect(url, autocommit=True) as conn:
        _require_pg_cron(conn)
        _, interval = cutoff(conn, older_than)  # PostgreSQL's interval grammar, at least a day
        member = conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (MAINTENANCE_ROLE,)).fetchone()[0]
        if not member:
            raise RetentionError(f"{conn.info.user} is not a member of {MAINTENANCE_ROLE}: schedule the job as the "
                                 "role that migrates this database (0003c_maintenance_role grants it)")
        command = job_command(interval, batch_size)
        try:
            job = conn.execute("SELECT cron.schedule(%s, %s, %s)", (JOB, cron_schedule, command)).fetchone()[0]
        except psycopg.errors.InvalidParameterValue as exc:
            raise RetentionError(f"invalid --schedule {cron_schedule!r}: {exc.diag.message_primary}; give a cron "
                                 "expression, e.g. '*/5 * * * *'") from None
        report.facts.update({"database": db.masked(url), "job": JOB, "jobid": job, "schedule": cron_schedule,
                             "older_than": interval, "batch_size": batch_size, "command": command})
    report.add("schedule", OK, f"pg_cron job {JOB} (id {job}) runs {cron_schedule!r}: one batch of {batch_size} "
               f"rows older than {interval}, as {MAINTENANCE_ROLE}")
    return report


def unschedule(url: URL) -> Report:
    """Remove the job; with no job, says so and exits 0."""
    report = Report("retention unschedule")
    with db.connect(url, autocommit=True) as conn:
        _require_pg_cron(conn)
        removed = [row[0] for row in conn.execute(
            "SELECT jobid FROM cron.job WHERE jobname = %s", (JOB,)).fetchall()]
        for job in removed:
            conn.execute("SELECT cron.unschedule(%s::bigint)", (job,))
        report.facts.update({"database": db.masked(url), "job": JOB, "removed": removed})
    report.add("unschedule", OK, f"pg_cron job {JOB} removed" if removed else f"no pg_cron job {JOB}: nothing to remove")
    return report
