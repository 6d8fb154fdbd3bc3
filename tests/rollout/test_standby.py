"""reserve.rollout.standby on a real streaming replica: what the booking pages on a read replica see.

One primary and one hot standby (pg_basebackup -R, started by reserve.rollout.ephemeral like every
throw-away server) for the module; each test works in a database of its own, created on the primary and
replayed to the standby.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import OK
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.rollout.preflight import preflight, replicas_behind
from reserve.rollout.scratch import unique_name
from reserve.rollout.standby import StandbyWatch, catch_up, long_report, lsn

pytestmark = pytest.mark.slow  # `make test-slow`: a primary and a hot standby of its own

# Short, so that the test of a cancelled standby query does not wait the default 30 s.
STREAMING_DELAY = "500ms"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[EphemeralPostgres, EphemeralPostgres]]:
    with EphemeralPostgres(settings={"synchronous_commit": "on"}) as primary, \
            primary.standby({"max_standby_streaming_delay": STREAMING_DELAY}) as standby:
        yield primary, standby


@pytest.fixture
def urls(pair) -> Iterator[tuple[URL, URL]]:
    """A database at the baseline with a small dataset, on the primary and (once replayed) on the standby."""
    primary, standby = pair
    name = unique_name("standby_test")
    with db.connect(primary.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    alembic_runner.upgrade(primary.url(name), "0001_baseline")
    with db.connect(primary.url(name), autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=3, windows_per_table=2))
    assert catch_up(primary.url(name), standby.url(name)) is not None  # the standby has it all before the test
    yield primary.url(name), standby.url(name)
    with db.connect(primary.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_an_lsn_is_read_as_a_byte_position():
    assert lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn("0/0") == 0


def test_the_standby_is_a_read_only_replica_of_what_the_primary_commits(urls):
    primary, standby = urls
    with db.connect(primary, autocommit=True) as conn:
        expected = conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]
    with StandbyWatch(primary, standby) as watch:
        assert watch.catch_up() is not None
        with db.connect(standby, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            assert conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0] == expected > 0
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("DELETE FROM public.allocations")


def test_standby_reads_of_allocations_wait_while_the_primary_holds_access_exclusive(urls):
    primary, standby = urls
    with StandbyWatch(primary, standby) as watch, watch.measure() as seen:
        with db.connect(primary) as holder:
            holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
            # The lock's record is flushed (and so sent and replayed) while the lock is held: a segment switch
            # flushes; otherwise an idle WAL writer may keep it until the end of the transaction.
            holder.execute("SELECT pg_switch_wal()")
            time.sleep(1.5)
            holder.commit()  # flushed at once (synchronous_commit): the standby releases the lock promptly
    figures = seen[0]
    assert figures.reads > 0 and figures.caught_up
    assert figures.longest_read_s >= 1.0, figures


def test_a_read_still_waiting_when_the_step_ends_counts_as_long_as_it_has_waited(urls):
    primary, standby = urls
    with StandbyWatch(primary, standby) as watch, db.connect(primary) as holder:
        with watch.measure() as seen:
            holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
            holder.execute("SELECT pg_switch_wal()")
            time.sleep(1.5)
        holder.commit()  # after the step: its reads are still waiting when it ends
    assert seen[0].longest_read_s >= 1.0, seen[0]


def test_the_standby_reader_waits_for_a_lock_as_long_as_it_takes(urls):
    primary, standby = urls
    with StandbyWatch(primary, standby) as watch, watch.reader() as conn:
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "0"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_a_standby_query_that_holds_back_replay_is_cancelled_and_counted(urls):
    primary, standby = urls
    outcome: list[BaseException | None] = []

    def long_report() -> None:
        with db.connect(standby, autocommit=True) as conn:
            try:
                conn.execute("SELECT pg_sleep(5) FROM (SELECT count(*) FROM public.allocations) counted").fetchall()
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

    with StandbyWatch(primary, standby) as watch:
        with watch.measure():
            report = threading.Thread(target=long_report)
            report.start()
            time.sleep(0.5)
            with db.connect(primary) as holder:
                holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
                holder.commit()
            report.join()
        assert isinstance(outcome[0], psycopg.errors.SerializationFailure), outcome
        assert "conflict with recovery" in str(outcome[0])
        deadline = time.monotonic() + 15  # the cancelled backend reports its conflict to the statistics
        while watch.conflicts()["confl_lock"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watch.conflicts()["confl_lock"] >= 1


def test_replay_lag_is_seen_while_replay_is_paused_and_the_catch_up_is_timed(urls):
    primary, standby = urls
    with db.connect(standby, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay() -> None:
        with db.connect(standby, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    resume = threading.Timer(1.5, resume_replay)
    try:
        with StandbyWatch(primary, standby) as watch:
            with watch.measure() as seen:
                with db.connect(primary, autocommit=True) as conn:
                    conn.execute("UPDATE public.restaurants SET name = name")
                time.sleep(0.3)
                resume.start()
        figures = seen[0]
        assert figures.replay_lag_peak_bytes > 0, figures
        assert figures.replay_lag_peak_s >= 0.2, figures
        assert figures.caught_up and figures.caught_up_after_s >= 0.5, figures
    finally:
        resume.cancel()
        resume_replay()


def test_a_standby_that_does_not_catch_up_in_time_is_reported_so(urls):
    primary, standby = urls
    with db.connect(standby, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with StandbyWatch(primary, standby, catch_up_timeout_s=1.0) as watch:
            with watch.measure() as seen:
                with db.connect(primary, autocommit=True) as conn:
                    conn.execute("UPDATE public.restaurants SET name = name")
        assert seen[0].caught_up is False and seen[0].caught_up_after_s is None
    finally:
        with db.connect(standby, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")


def test_reads_queue_behind_a_replayed_lock_that_waits_for_a_long_report_until_it_is_cancelled(urls):
    primary, standby = urls
    with StandbyWatch(primary, standby) as watch, long_report(standby) as report:
        with watch.measure() as seen:
            with db.connect(primary) as holder:
                holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
                holder.commit()
    assert report.cancelled_by_recovery, report
    # Replay asked for the lock behind the report and waited max_standby_streaming_delay (500 ms here): the
    # booking pages' reads queued behind that request, though the primary held its lock for milliseconds.
    assert seen[0].longest_read_s >= 0.3, seen[0]


def test_a_long_report_that_nothing_cancels_is_stopped_at_the_end(urls):
    primary, standby = urls
    with long_report(standby) as report:
        time.sleep(0.2)
    assert report.outcome == "still running at the end" and not report.cancelled_by_recovery


def test_preflight_of_the_swap_names_each_hot_standby_and_what_the_swap_does_there(urls):
    primary, standby = urls
    check = next(c for c in preflight(primary, "head", backup_confirmed=True).checks if c.name == "replicas")
    assert check.status == OK, check
    assert "1 hot standby(s)" in check.detail and "streaming" in check.detail
    assert "max_standby_streaming_delay" in check.detail



def test_a_standby_far_behind_or_not_streaming_is_named_by_the_preflight():
    rows = [("eu-1", "streaming", 0.2), ("eu-2", "catchup", 0.0), ("eu-3", "streaming", 45.0), ("eu-4", "streaming", None)]
    assert replicas_behind(rows) == ["eu-2", "eu-3"]

