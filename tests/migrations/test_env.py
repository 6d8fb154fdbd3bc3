"""alembic/env.py as an operator meets it: DATABASE_URL, secrets kept out of the output, the
``-x`` session timeouts, the advisory lock that serializes concurrent runs, and the offline script.

Most tests run the real ``python -m alembic`` in a subprocess, the way a deploy does.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from reserve import db
from reserve.rollout import alembic_runner
from reserve.schema import locks
from tests.support import REVISIONS, Database, wait_until

HEAD = REVISIONS[-1]


LOCK_KEY = locks.MIGRATION_LOCK_KEY


def run_alembic(database_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``alembic`` with DATABASE_URL set to ``database_url`` exactly (None: removed)."""
    return alembic_runner.run_cli(database_url, *args)


def start_alembic(db_: Database, *args: str) -> subprocess.Popen[str]:
    return alembic_runner.start_cli(db_.url, *args)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def table_exists(db_: Database, name: str) -> bool:
    with db_.connect() as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()[0]


def version_rows(db_: Database) -> list[str]:
    with db_.connect() as conn:
        if not conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()[0]:
            return []
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


@contextmanager
def migration_lock_held(db_: Database) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migration advisory lock on ``db_`` from another session, as a running migration would."""
    with db_.connect(autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            yield holder
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def sessions_waiting_for_migration_lock(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database() "
        "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1",
        (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()[0]


# ---------------------------------------------------------------- DATABASE_URL and secrets


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        (None, "DATABASE_URL is not set"),
        ("", "DATABASE_URL is not set"),
        ("mysql://u:NotPgSecret42@127.0.0.1/db", "DATABASE_URL must be a postgresql:// URL"),
    ],
    ids=["unset", "empty", "not-postgresql"],
)
def test_a_missing_or_foreign_database_url_fails_with_one_clear_line(database_url: str | None, expected: str):
    result = run_alembic(database_url, "upgrade", "head")
    assert result.returncode != 0
    assert f"FAILED: {expected}" in output(result), output(result)
    assert "Traceback" not in output(result)
    assert "NotPgSecret42" not in output(result)


def test_an_unreachable_server_is_reported_without_its_password():
    secret = f"SecretPw{uuid.uuid4().hex}"
    result = run_alembic(f"postgresql://u:{secret}@127.0.0.1:1/db", "upgrade", "head")
    assert result.returncode != 0
    assert "cannot connect to postgresql://u:***@127.0.0.1:1/db" in result.stderr, result.stderr
    assert secret not in output(result)


def test_a_wrong_password_is_reported_without_echoing_it(empty_db: Database):
    wrong = f"Wrong{uuid.uuid4().hex}"
    result = alembic_runner.run_cli(empty_db.url.set(password=wrong), "upgrade", "head")
    assert result.returncode != 0
    assert "cannot connect to" in result.stderr, result.stderr
    assert "password authentication failed" in result.stderr
    assert wrong not in output(result)
    assert empty_db.current() is None


def test_a_plain_postgresql_url_is_driven_by_psycopg(empty_db: Database):
    plain = empty_db.url.set(drivername="postgresql")
    assert plain.render_as_string(hide_password=False).startswith("postgresql://")
    upgrade = alembic_runner.run_cli(plain, "upgrade", "head")
    assert upgrade.returncode == 0, db.scrub(upgrade.stderr, plain)
    current = alembic_runner.run_cli(plain, "current")
    assert current.returncode == 0, db.scrub(current.stderr, plain)
    assert f"{HEAD} (head)" in current.stdout
    assert empty_db.current() == HEAD
    assert plain.password not in output(upgrade) + output(current)


# ---------------------------------------------------------------- -x session timeouts


def test_x_timeouts_are_the_session_settings_of_every_revision(empty_db: Database):
    """Values unlike the defaults, seen from inside each revision's transaction: a SET LOCAL in the first
    transaction only, or the defaults, would not pass."""
    seen: list[tuple[str, str]] = []

    def probe(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001 (event signature)
        if re.match(r"\s*(INSERT INTO|UPDATE) alembic_version\b", statement):
            show = cursor.connection.execute
            seen.append((show("SHOW lock_timeout").fetchone()[0], show("SHOW statement_timeout").fetchone()[0]))

    event.listen(Engine, "after_cursor_execute", probe)
    try:
        empty_db.upgrade("head", x=["lock_timeout=1234ms", "statement_timeout=98765ms"])
    finally:
        event.remove(Engine, "after_cursor_execute", probe)
    assert len(seen) == len(REVISIONS)
    assert [statement for _, statement in seen] == ["98765ms"] * len(REVISIONS)
    # The declared locks are taken with swap_lock_timeout (2s) per attempt; afterwards every statement,
    # the version update included, runs under the session's lock_timeout again.
    assert [lock for lock, _ in seen] == ["1234ms"] * len(REVISIONS)


def test_a_revision_that_cannot_get_its_declared_locks_gives_up_naming_the_holder_and_changes_nothing(
        baseline_db: Database):
    # 0002 adds a foreign key to bookings: it declares SHARE ROW EXCLUSIVE there, which waits for this lock.
    with baseline_db.connect() as blocker:
        blocker.execute("SET application_name = 'nightly-report'")
        blocker.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
        blocker_pid = blocker.info.backend_pid
        try:
            result = alembic_runner.run_cli(baseline_db.url, "-x", "swap_lock_timeout=300ms", "-x", "swap_lock_attempts=2",
                                 "-x", "swap_lock_pause=0.1", "upgrade", "0002_confirmation_results", timeout=120)
        finally:
            blocker.rollback()
    failed = [line for line in output(result).splitlines() if line.startswith("FAILED:")]
    assert result.returncode != 0 and len(failed) == 1, db.scrub(output(result), baseline_db.url)
    assert "upgrade 0002_confirmation_results: could not lock public.bookings, public.restaurants" in failed[0]
    assert f"pid {blocker_pid} (nightly-report) holds ACCESS EXCLUSIVE on public.bookings" in failed[0]
    assert "Nothing was changed" in failed[0] and "Traceback" not in output(result)
    assert baseline_db.url.password not in output(result)
    assert version_rows(baseline_db) == ["0001_baseline"]
    assert not table_exists(baseline_db, "booking_confirmation_results")

    rerun = alembic_runner.run_cli(baseline_db.url, "upgrade", "0002_confirmation_results")
    assert rerun.returncode == 0, db.scrub(rerun.stderr, baseline_db.url)
    assert version_rows(baseline_db) == ["0002_confirmation_results"]
    assert table_exists(baseline_db, "booking_confirmation_results")


@pytest.mark.parametrize("option", ["statement_timeout", "lock_timeout", "migration_lock_wait"])
def test_an_invalid_x_timeout_is_refused_before_anything_changes(empty_db: Database, option: str):
    before = empty_db.snapshot()
    result = alembic_runner.run_cli(empty_db.url, "-x", f"{option}=banana", "upgrade", "head")
    assert result.returncode != 0
    assert f"FAILED: invalid -x {option}:" in output(result), db.scrub(output(result), empty_db.url)
    assert '"banana"' in output(result)
    assert "Traceback" not in output(result)
    assert version_rows(empty_db) == []
    assert empty_db.snapshot() == before


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("typo", ["swap_metod=locked", "swap_lock_timout=30s"])
def test_a_misspelled_x_option_is_refused_with_exit_2_naming_it_and_the_known_ones(empty_db: Database, typo: str,
                                                                                   mode: str):
    before = empty_db.snapshot()
    result = alembic_runner.run_cli(empty_db.url, "-x", typo, "upgrade", "head", *(["--sql"] if mode == "offline" else []))
    assert result.returncode == 2, db.scrub(output(result), empty_db.url)
    failed = [line for line in output(result).splitlines() if line.startswith("FAILED:")]
    assert len(failed) == 1 and f"unknown -x option(s): {typo.split('=')[0]};" in failed[0]
    assert "Known: " in failed[0] and "swap_method" in failed[0] and "swap_lock_timeout" in failed[0]
    assert "Traceback" not in output(result) and "ALTER TABLE" not in output(result)
    assert version_rows(empty_db) == []
    assert empty_db.snapshot() == before


# ---------------------------------------------------------------- the migration lock


def test_two_concurrent_upgrades_serialize_and_apply_head_once(empty_db: Database, head_db: Database):
    # Both runs are started while the migration lock is held and are seen queued behind it before it is
    # released, so they really contend for the database instead of happening to run one after the other.
    runs: list[subprocess.Popen[str]] = []
    try:
        with migration_lock_held(empty_db) as holder:
            runs = [start_alembic(empty_db, "-x", "swap_method=online", "upgrade", "head") for _ in range(2)]
            wait_until(lambda: sessions_waiting_for_migration_lock(holder) == 2 or any(r.poll() is not None for r in runs),
                     "both alembic runs to queue for the migration lock")
            assert all(r.poll() is None for r in runs), "an alembic run ended while the migration lock was held"
        outcomes = [r.communicate(timeout=300) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
                r.communicate()
    for run, (out, _) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, db.scrub(out, empty_db.url)
    assert version_rows(empty_db) == [HEAD]
    assert empty_db.snapshot() == head_db.snapshot()  # head_db too has the online upgrade's window open


def test_a_run_gives_up_after_migration_lock_wait_naming_the_run_that_holds_the_lock(empty_db: Database):
    before = empty_db.snapshot()
    with migration_lock_held(empty_db) as holder:
        pid = holder.info.backend_pid
        result = alembic_runner.run_cli(empty_db.url, "-x", "migration_lock_wait=1s", "upgrade", "head", timeout=120)
    assert result.returncode != 0
    assert f"still holds the migration lock after 1s: pid {pid} (reserve-test, connected since" in result.stderr, \
        db.scrub(result.stderr, empty_db.url)
    assert version_rows(empty_db) == []
    assert empty_db.snapshot() == before

    rerun = alembic_runner.run_cli(empty_db.url, "upgrade", "head")
    assert rerun.returncode == 0, db.scrub(rerun.stderr, empty_db.url)
    assert version_rows(empty_db) == [HEAD]


# ---------------------------------------------------------------- offline script


def test_offline_script_holds_a_session_lock_and_timeouts_and_commits_each_revision_alone():
    script = alembic_runner.offline_sql("upgrade", "head",
                                        x=["lock_timeout=250ms", "statement_timeout=7min", "migration_lock_wait=90s"])
    lines = [line.strip() for line in script.splitlines()]
    assert "pg_advisory_xact_lock" not in script
    lock = lines.index(f"SELECT pg_advisory_lock({LOCK_KEY});")
    unlock = lines.index(f"SELECT pg_advisory_unlock({LOCK_KEY});")
    begins = [i for i, line in enumerate(lines) if line == "BEGIN;"]
    commits = [i for i, line in enumerate(lines) if line == "COMMIT;"]
    assert len(begins) == len(commits) == len(REVISIONS)

    # The lock wait bounds the advisory lock; the timeouts are session settings, set outside any transaction.
    assert lines.index("SET lock_timeout = '90s';") < lock
    first_begin = begins[0]
    assert lock < lines.index("SET lock_timeout = '250ms';") < first_begin
    assert lock < lines.index("SET statement_timeout = '7min';") < first_begin
    assert commits[-1] < unlock

    # One BEGIN ... COMMIT around each revision, in chain order.
    runs = [i for i, line in enumerate(lines) if line.startswith("-- Running upgrade")]
    assert [lines[i].split("-> ")[1] for i in runs] == REVISIONS
    for begin, run, commit, next_begin in zip(begins, runs, commits, [*begins[1:], unlock], strict=True):
        assert begin < run < commit < next_begin
