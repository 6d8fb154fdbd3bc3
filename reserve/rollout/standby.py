"""What a hot standby sees while the chain runs on its primary: replay lag, reads that waited, cancellations.

Read replicas serve the booking pages. An ACCESS EXCLUSIVE lock taken on the
primary is WAL-logged and replayed: until the commit of the transaction that
took it is replayed, every standby read of that table waits, so the locked
swap blocks the replicas for the whole build (and then some: the replay
itself). A standby query that holds a lock replay needs, or a snapshot replay
would invalidate, delays replay up to ``max_standby_streaming_delay`` (30 s
by default) and is then cancelled ("conflict with recovery").

``StandbyWatch`` measures exactly that, on a primary and its standby:

- a reader reads ``allocations`` on the standby the way a booking page
  loads an allocation (by its id), one read after another, and keeps every
  read's start, duration and outcome. Any read of the table takes the same
  lock, so it waits as long as any other; this one costs well under a
  millisecond on either guard, so its duration is its wait (a restaurant's
  overlap probe would add its own cost, hundreds of milliseconds at 1M rows
  under the old guard, which the new one removes);
- a sampler compares the primary's flushed WAL position (what it can send;
  every commit is there once the committer returns, with synchronous_commit
  on) with the standby's replay position: lag in bytes, and in seconds (how
  long ago the primary first flushed WAL the standby has not replayed yet,
  at the sampler's resolution);
- per step (``measure()``): WAL caught up after the step (how long after its
  end the standby had replayed everything the step wrote), the longest read,
  reads cancelled, and the recovery conflicts the standby counted for the
  database (pg_stat_database_conflicts, every session, not only the reader).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db

CONFLICT_KINDS = ("confl_tablespace", "confl_lock", "confl_snapshot", "confl_bufferpin", "confl_deadlock")
# The standby settings that decide what the booking pages see during a rollout (docs/OPERATIONS.md).
SETTINGS = ("max_standby_streaming_delay", "hot_standby_feedback", "hot_standby")
READ = 'SELECT id, "window" FROM public.allocations WHERE id = %s'
# A report that reads allocations for as long as it is let (an export, an analytics query on a replica).
REPORT = "SELECT pg_sleep(3600) FROM (SELECT count(*) FROM public.allocations) AS counted"
FIRST_ID = "SELECT id FROM public.allocations LIMIT 1"
CANCELLED = {"40001", "57P04", "57P01"}  # conflict with recovery: statement cancelled, database dropped, terminated


def lsn(text: str) -> int:
    """A pg_lsn ('16/B374D848') as a byte position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class Read:
    started: float  # perf_counter
    seconds: float
    outcome: str  # ok | cancelled | error:<sqlstate> (a read of a table not there yet is not kept)


@dataclass(frozen=True)
class LagSample:
    at: float  # perf_counter
    primary_lsn: int
    replayed_lsn: int
    lag_s: float

    @property
    def lag_bytes(self) -> int:
        return max(self.primary_lsn - self.replayed_lsn, 0)


@dataclass
class StandbyFigures:
    """One step as the standby saw it."""

    reads: int
    longest_read_s: float
    cancelled_reads: int
    read_errors: dict[str, int]
    replay_lag_peak_s: float
    replay_lag_peak_bytes: int
    caught_up: bool
    caught_up_after_s: float | None  # after the step's end; None when not within the timeout
    recovery_conflicts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["longest_read_s"] = round(self.longest_read_s, 4)
        out["replay_lag_peak_s"] = round(self.replay_lag_peak_s, 3)
        if self.caught_up_after_s is not None:
            out["caught_up_after_s"] = round(self.caught_up_after_s, 3)
        return out


@dataclass
class StandbyWatch:
    """Watch ``standby`` (a database on a hot standby) while work runs on ``primary`` (the same database on
    its primary); a context manager. ``catch_up_timeout_s`` bounds the wait after each measured step."""

    primary: URL
    standby: URL
    read_interval_s: float = 0.02
    sample_interval_s: float = 0.02
    catch_up_timeout_s: float = 120.0
    reads: list[Read] = field(default_factory=list)
    samples: list[LagSample] = field(default_factory=list)
    error: BaseException | None = None
    _reading_since: float | None = None  # the read in flight: a read still waiting counts as long as it has waited
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- the two threads

    def _connect_standby(self) -> psycopg.Connection[Any]:
        """The standby's copy of the database appears when its CREATE DATABASE is replayed: wait for it."""
        deadline = time.monotonic() + self.catch_up_timeout_s
        while True:
            try:
                conn = db.connect(self.standby, autocommit=True, application_name="reserve-standby-watch")
                return conn
            except db.ConnectionFailed:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                time.sleep(0.1)

    def reader(self) -> psycopg.Connection[Any]:
        """The reader's connection: like a booking page's, it waits for a lock as long as it takes (the tools'
        10 s lock_timeout would cut the very wait this measures short)."""
        conn = self._connect_standby()
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = 0")
        return conn

    def _read_loop(self) -> None:
        allocation: Any = None
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.is_set():
                if conn is None or conn.closed:
                    conn = self.reader()
                started = self._reading_since = time.perf_counter()
                outcome = "ok"
                try:
                    if allocation is None:  # no rows yet: finding one is the read
                        row = conn.execute(FIRST_ID).fetchone()
                        allocation = row[0] if row else None
                    else:
                        conn.execute(READ, (allocation,)).fetchall()
                except psycopg.errors.UndefinedTable:
                    outcome = ""  # before the baseline: nothing to read yet
                except psycopg.Error as exc:
                    state = exc.sqlstate or ""
                    outcome = "cancelled" if state in CANCELLED or conn.closed else f"error:{state or 'connection'}"
                with self._lock:
                    self._reading_since = None
                    if outcome:
                        self.reads.append(Read(started, time.perf_counter() - started, outcome))
                self._stop.wait(self.read_interval_s)
        except BaseException as exc:  # raised again by __exit__, in the caller's thread
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def _sample_loop(self) -> None:
        try:
            with db.connect(self.primary, autocommit=True, application_name="reserve-standby-watch") as primary, \
                    self._connect_standby() as standby:
                history: list[tuple[float, int]] = []  # (when, the primary's flushed position then)
                while not self._stop.is_set():
                    now = time.perf_counter()
                    written = lsn(primary.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
                    replayed = lsn(standby.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0])
                    history.append((now, written))
                    # The oldest moment at which the primary had flushed WAL the standby has still not replayed.
                    first = bisect.bisect_right([pos for _, pos in history], replayed)
                    lag_s = now - history[first][0] if first < len(history) else 0.0
                    if first > 0:
                        del history[:first - 1]
                    with self._lock:
                        self.samples.append(LagSample(now, written, replayed, lag_s))
                    self._stop.wait(self.sample_interval_s)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> StandbyWatch:
        self._connect_standby().close()  # the database is there before anything is measured
        for target, name in ((self._read_loop, "standby-reader"), (self._sample_loop, "standby-lag")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.error and not exc[0]:
            raise self.error

    # ---------------------------------------------------------------- what the caller asks

    def settings(self) -> dict[str, str]:
        with self._connect_standby() as conn:
            return dict(conn.execute("SELECT name, setting || COALESCE(unit, '') FROM pg_settings "
                                     "WHERE name = ANY(%s)", (list(SETTINGS),)).fetchall())

    def conflicts(self) -> dict[str, int]:
        """The recovery conflicts the standby has counted for the database, per kind, since it started."""
        with self._connect_standby() as conn:
            row = conn.execute(f"SELECT {', '.join(CONFLICT_KINDS)} FROM pg_stat_database_conflicts "
                               "WHERE datname = current_database()").fetchone()
        return dict(zip(CONFLICT_KINDS, row, strict=True))

    def catch_up(self) -> float | None:
        """Seconds until the standby has replayed everything the primary has flushed now; None on timeout."""
        return catch_up(self.primary, self.standby, self.catch_up_timeout_s)

    def figures(self, since: float, until: float, caught_up_after_s: float | None,
                conflicts: dict[str, int]) -> StandbyFigures:
        """The reads that started and the lag sampled in [since, until] (perf_counter)."""
        with self._lock:
            reads = [r for r in self.reads if since <= r.started <= until]
            if self._reading_since is not None and since <= self._reading_since <= until:
                reads.append(Read(self._reading_since, until - self._reading_since, "still waiting"))
            samples = [s for s in self.samples if since <= s.at <= until]
        errors: dict[str, int] = {}
        for read in reads:
            if read.outcome.startswith("error:"):
                errors[read.outcome[6:]] = errors.get(read.outcome[6:], 0) + 1
        return StandbyFigures(
            reads=len(reads), longest_read_s=max((r.seconds for r in reads), default=0.0),
            cancelled_reads=sum(1 for r in reads if r.outcome == "cancelled"), read_errors=errors,
            replay_lag_peak_s=max((s.lag_s for s in samples), default=0.0),
            replay_lag_peak_bytes=max((s.lag_bytes for s in samples), default=0),
            caught_up=caught_up_after_s is not None, caught_up_after_s=caught_up_after_s,
            recovery_conflicts=conflicts)

    @contextmanager
    def measure(self) -> Iterator[list[StandbyFigures]]:
        """Measure the block: after it, wait for the standby to catch up, then append its figures to the
        yielded list (a list, so the figures exist only once the block and the catch-up are over)."""
        out: list[StandbyFigures] = []
        before = self.conflicts()
        since = time.perf_counter()
        try:
            yield out
        finally:
            caught = self.catch_up()
            until = time.perf_counter()
            after = self.conflicts()
            delta = {kind: after[kind] - before[kind] for kind in CONFLICT_KINDS if after[kind] != before[kind]}
            out.append(self.figures(since, until, caught, delta))

    def lag_series(self, origin: float) -> list[tuple[float, float]]:
        """(seconds since ``origin``, replay lag in seconds) of every sample, for the timeline."""
        with self._lock:
            return [(s.at - origin, s.lag_s) for s in self.samples if s.at >= origin]


def catch_up(primary: URL, standby: URL, timeout_s: float = 120.0) -> float | None:
    """Seconds until ``standby`` has replayed everything ``primary`` has flushed now (its database included, if
    the primary just created it); None on timeout."""
    started = time.perf_counter()
    with db.connect(primary.set(database="postgres"), autocommit=True) as conn:
        target = lsn(conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
    with db.connect(standby.set(database="postgres"), autocommit=True) as conn:
        while time.perf_counter() - started < timeout_s:
            if lsn(conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]) >= target:
                return time.perf_counter() - started
            time.sleep(0.01)
    return None


@dataclass
class Report:
    """What happened to a long report on the standby: cancelled by a recovery conflict after how long."""

    seconds: float | None = None
    cancelled_by_recovery: bool = False
    outcome: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": None if self.seconds is None else round(self.seconds, 3),
                "cancelled_by_recovery": self.cancelled_by_recovery, "outcome": self.outcome}


@contextmanager
def long_report(standby: URL) -> Iterator[Report]:
    """A report reading ``allocations`` on the standby for the whole block, started before it: a replayed
    ACCESS EXCLUSIVE lock waits behind it up to ``max_standby_streaming_delay``, then cancels it (and every
    read of the table queued behind the replay waits as long). Stopped at the end if still running."""
    report, stopping = Report(), threading.Event()
    conn = db.connect(standby, autocommit=True, application_name="reserve-standby-report")
    conn.execute("SET lock_timeout = 0")
    conn.execute("SET statement_timeout = 0")

    def run() -> None:
        started = time.perf_counter()
        try:
            conn.execute(REPORT)
            report.outcome = "finished"
        except psycopg.Error as exc:
            report.cancelled_by_recovery = "conflict with recovery" in str(exc)
            report.outcome = ("cancelled by recovery" if report.cancelled_by_recovery
                              else "still running at the end" if stopping.is_set() else f"error:{exc.sqlstate}")
        report.seconds = time.perf_counter() - started

    thread = threading.Thread(target=run, name="standby-report", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not _report_holds_its_lock(standby) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield report
    finally:
        if thread.is_alive():
            stopping.set()
            conn.cancel()
        thread.join(timeout=30)
        conn.close()


def _report_holds_its_lock(standby: URL) -> bool:
    with db.connect(standby, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = "
                            "'reserve-standby-report' AND state = 'active' AND query LIKE 'SELECT pg_sleep%%')"
                            ).fetchone()[0]
