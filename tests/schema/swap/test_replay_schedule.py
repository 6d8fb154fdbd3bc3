"""The window's replayer: a pg_cron job where pg_cron is installed (created when the window opens, gone with the
machinery), `reserve swap follow` where it is not. On a throw-away server that loads pg_cron."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reserve.operations import swap_window
from reserve.schema.swap import changelog
from tests import swapping
from tests.ops_support import pg_cron_database
from tests.support import ONLINE, REVISIONS, Database, slot

CRON_DB = "reserve_swap_cron"


@pytest.fixture(scope="module")
def cron_db() -> Iterator[Database]:
    """A server of its own that loads pg_cron; its database below the swap, with the extension."""
    with pg_cron_database(CRON_DB, REVISIONS[-2]) as target:
        yield target


def _job(conn) -> tuple | None:
    return conn.execute("SELECT schedule, command FROM cron.job WHERE jobname = %s", (changelog.CRON_JOB,)).fetchone()


def test_the_window_opens_with_a_pg_cron_job_that_replays_the_log_and_finish_removes_it(cron_db: Database):
    target = cron_db
    target.upgrade("head", x=ONLINE)
    (venue, _) = swapping.two_venues(target)
    with target.connect(autocommit=True) as conn:
        schedule, command = _job(conn)
        assert schedule == changelog.cron_schedule(changelog.cron_version(conn))
        written = swapping.insert(conn, venue.id, venue.tables[0], slot(2))
        conn.execute(command)  # what the job runs, as it runs it
        assert written in {row[0] for row in swapping.rows(conn, "reserve_swap.allocations")}
    report = swap_window.finish(target.url)
    assert report.exit_code == 0, report.to_text()
    with target.connect() as conn:
        assert _job(conn) is None
    target.downgrade("-1")
    with target.connect() as conn:
        assert _job(conn) is None


def test_swap_follow_replays_where_no_job_runs(head_db: Database):
    (venue, _) = swapping.two_venues(head_db)
    with head_db.connect(autocommit=True) as conn:
        written = swapping.insert(conn, venue.id, venue.tables[0], slot(2))
        lines: list[str] = []
        report = swap_window.follow(head_db.url, interval_s=0.1, rounds=2, progress=lines.append)
        assert report.exit_code == 0 and len(lines) == 2 and "log 0 rows" in lines[-1]
        assert written in {row[0] for row in swapping.rows(conn, "reserve_swap.allocations")}
        assert report.facts["log_rows"] == 0
