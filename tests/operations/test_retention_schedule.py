"""reserve retention --schedule / --unschedule: retention run by a real pg_cron on a throw-away server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from reserve.operations import retention_schedule
from tests.ops_support import pg_cron_database, with_aged_evidence
from tests.support import Database, reserve_cli

pytestmark = pytest.mark.slow  # `make test-slow`: a pg_cron server of its own

CRON_DB = "reserve_cron"


@pytest.fixture(scope="module")
def cron_db() -> Iterator[Database]:
    """A server of its own that loads pg_cron; a database at head with pg_cron, old and recent evidence."""
    with pg_cron_database(CRON_DB, "head") as target:
        yield with_aged_evidence(target, old=3, recent=2)


def run(target: Database, *args: str):
    return reserve_cli(target.url, "retention", *args, "--json", catch_exceptions=True)


def _evidence(target: Database) -> tuple[int, int]:
    with target.connect() as conn:
        return conn.execute("SELECT count(*) FILTER (WHERE checked_at < now() - interval '30 days'), "
                            "count(*) FILTER (WHERE checked_at >= now() - interval '30 days') "
                            "FROM booking_confirmation_results").fetchone()


def test_the_scheduled_job_runs_in_pg_cron_as_the_maintenance_role_and_purges_exactly_the_old_rows(cron_db):
    assert _evidence(cron_db) == (6, 4)
    first = run(cron_db, "--schedule", "* * * * *", "--older-than", "30d", "--batch-size", "100")
    again = run(cron_db, "--schedule", "* * * * *", "--older-than", "30d", "--batch-size", "100")
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert json.loads(first.output)["facts"]["jobid"] == json.loads(again.output)["facts"]["jobid"]  # updated in place
    with cron_db.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (retention_schedule.JOB,)).fetchone()[0] == 1
        deadline = time.monotonic() + 150  # pg_cron 1.4 runs jobs on the minute
        while time.monotonic() < deadline:
            done = conn.execute("SELECT status, return_message FROM cron.job_run_details d JOIN cron.job j "
                                "USING (jobid) WHERE j.jobname = %s AND d.status IN ('succeeded', 'failed') "
                                "ORDER BY d.start_time LIMIT 1", (retention_schedule.JOB,)).fetchone()
            if done:
                break
            time.sleep(2)
        assert done is not None, "pg_cron did not run the job within 150 s"
        assert done[0] == "succeeded", done
    assert _evidence(cron_db) == (0, 4)  # exactly the rows older than 30 days went, every venue's


def test_unschedule_removes_the_job_and_a_second_unschedule_changes_nothing(cron_db):
    assert run(cron_db, "--schedule", "*/5 * * * *").exit_code == 0
    first, second = run(cron_db, "--unschedule"), run(cron_db, "--unschedule")
    assert first.exit_code == second.exit_code == 0
    assert json.loads(first.output)["facts"]["removed"] and json.loads(second.output)["facts"]["removed"] == []
    with cron_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone()[0] == 0


def test_a_bad_schedule_is_exit_2_and_schedules_nothing(cron_db):
    result = run(cron_db, "--schedule", "every tuesday")
    assert result.exit_code == 2 and "invalid --schedule 'every tuesday'" in result.output
    with cron_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone()[0] == 0


def test_without_pg_cron_schedule_and_unschedule_are_exit_2(head_db: Database):
    for args in (["--schedule", "*/5 * * * *"], ["--unschedule"]):
        result = run(head_db, *args)
        assert result.exit_code == 2 and "pg_cron is not installed in this database" in result.output, result.output
