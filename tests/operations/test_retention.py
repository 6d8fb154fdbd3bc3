"""reserve retention: durations, batches, dry runs, idempotence, and bad input refused with exit 2."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from click.testing import CliRunner

from reserve.cli import main
from reserve.operations import retention
from tests.ops_support import with_aged_evidence
from tests.support import Database, reserve_cli, scalar


def run(db: Database, *args: str):
    return reserve_cli(db.url, "retention", *args)


def _counts(db: Database) -> tuple[int, int]:
    with db.connect() as conn:
        return (scalar(conn, "SELECT count(*) FROM booking_confirmation_results"),
                scalar(conn, "SELECT count(*) FROM confirmation_cache_events"))


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", timedelta(days=30)), ("2w", timedelta(weeks=2)), ("1d12h", timedelta(days=1, hours=12)),
    ("1 day 12 hours", timedelta(days=1, hours=12)), ("P30D", timedelta(days=30)), (" 30d ", timedelta(days=30)),
])
def test_durations_are_read_by_postgresqls_interval_input(head_db: Database, text: str, expected: timedelta):
    with head_db.connect(autocommit=True) as conn:
        until, _ = retention.cutoff(conn, text)
        now = scalar(conn, "SELECT now()")
    assert abs((now - until) - expected) < timedelta(seconds=5)


@pytest.mark.parametrize(("text", "message"), [
    ("", "invalid duration ''"), ("abc", 'invalid input syntax for type interval: "abc"'),
    ("30x", "invalid duration '30x'"), ("0d", "it must be longer than zero"), ("-5d", "longer than zero"),
    ("12h", "too short: evidence younger than a day is never purged"), ("90m", "too short"),
])
def test_durations_postgresql_refuses_or_too_short_ones_are_refused(head_db: Database, text: str, message: str):
    with head_db.connect(autocommit=True) as conn, pytest.raises(retention.RetentionError, match=re.escape(message)):
        retention.cutoff(conn, text)


def test_retention_deletes_old_rows_in_batches_and_a_second_run_deletes_nothing(head_db: Database):
    with_aged_evidence(head_db)
    result = run(head_db, "--older-than", "30d", "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)["facts"]
    assert (facts["evidence_rows"], facts["cache_event_rows"], facts["batches"]) == (6, 6, 3)
    assert _counts(head_db) == (4, 4)

    again = run(head_db, "--older-than", "30d")
    assert again.exit_code == 0
    assert "deleted 0 evidence row(s) and 0 cache event(s)" in again.output and "none left" in again.output
    assert _counts(head_db) == (4, 4)


def test_dry_run_reports_the_counts_and_deletes_nothing(head_db: Database):
    with_aged_evidence(head_db)
    result = run(head_db, "--older-than", "30d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would delete 6 evidence row(s) and 6 cache event(s)" in result.output and "nothing deleted" in result.output
    assert _counts(head_db) == (10, 10)


def test_a_longer_retention_keeps_rows_younger_than_it(head_db: Database):
    with_aged_evidence(head_db)
    assert run(head_db, "--older-than", "6w").exit_code == 0
    assert _counts(head_db) == (10, 10)


@pytest.mark.parametrize("size", ["-5", "0"])
def test_a_non_positive_batch_size_exits_2_and_deletes_nothing(head_db: Database, size: str):
    with_aged_evidence(head_db)
    result = run(head_db, "--older-than", "30d", "--batch-size", size)
    assert result.exit_code == 2
    assert f"batch size must be a positive number of rows, got {size}" in result.output
    assert _counts(head_db) == (10, 10)


@pytest.mark.parametrize(("older_than", "message"), [
    ("abc", "invalid duration 'abc'"), ("12h", "too short"), ("0d", "longer than zero"),
])
def test_bad_durations_exit_2_and_delete_nothing(head_db: Database, older_than: str, message: str):
    with_aged_evidence(head_db)
    result = run(head_db, "--older-than", older_than)
    assert result.exit_code == 2 and message in result.output
    assert _counts(head_db) == (10, 10)


def test_a_database_without_the_function_exits_2_naming_the_revision(baseline_db: Database):
    result = run(baseline_db, "--older-than", "30d")
    assert result.exit_code == 2
    assert "purge_booking_confirmation_results does not exist: upgrade this database to 0003a_operations" in result.output


def test_an_unreachable_database_exits_2_without_the_password(head_db: Database):
    url = head_db.url.set(host="127.0.0.1", port=1, password="Retention-Secret-42")
    result = CliRunner().invoke(main, ["retention", "--older-than", "30d"],
                                env={"DATABASE_URL": url.render_as_string(hide_password=False)})
    assert result.exit_code == 2 and "cannot connect" in result.output
    assert "Retention-Secret-42" not in result.output


def test_max_batches_stops_early_and_says_rows_remain(head_db: Database):
    with_aged_evidence(head_db)
    report = retention.purge(head_db.url, "30d", batch_size=2, max_batches=1)
    assert report.facts["evidence_rows"] == 2 and report.checks[0].status == "warn"
    assert "rows older than the cutoff remain" in report.checks[0].detail
    assert report.exit_code == 0
