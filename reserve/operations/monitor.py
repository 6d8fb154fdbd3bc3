"""``reserve monitor``: the checklist's 7-day monitoring queries, once or as a Prometheus exporter.

``--once`` runs them and prints a table (or ``--json``); it exits 1 when the
overlap guard is missing or allocations overlap. ``--serve PORT`` exposes them
on ``http://127.0.0.1:PORT/metrics`` through a custom prometheus_client
collector that reads the database at most every ``--min-interval`` seconds,
however often it is scraped, on a fresh connection with a statement timeout:

| metric | what |
|---|---|
| ``reserve_database_up`` | 1 when the last reading succeeded |
| ``reserve_overlapping_allocations`` | pairs of live allocations in one restaurant on one resource at once (must be 0) |
| ``reserve_guard_present`` / ``reserve_guard_valid`` | ``allocations_no_overlap`` exists / exists as defined and validated |
| ``reserve_confirmation_results_rows`` | rows in booking_confirmation_results |
| ``reserve_confirmation_results_last_hour`` | evidence rows written in the last hour (growth per hour) |
| ``reserve_confirmation_results_oldest_age_seconds`` | age of the oldest evidence row (retention at work) |
| ``reserve_confirm_cache_lookups{outcome}`` / ``reserve_confirm_cache_hit_ratio`` | confirm-client hits and misses over 24 h |
| ``reserve_overlap_probe_duration_seconds`` | histogram of the restaurant-scoped overlap probe, run at each reading |
| ``reserve_confirm_duration_seconds``, ``reserve_confirm_errors_total`` | the confirm client's own metrics, in this process |

Overlaps: a validated ``allocations_no_overlap`` proves there are none, so the
exporter scans the table (one sort, reserve.schema.guards) only when the catalog
cannot prove it; ``--once`` always scans.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from sqlalchemy.engine import URL

from reserve import db
from reserve.capacity import confirm
from reserve.report import FAIL, OK, WARN, Report, table
from reserve.schema import guards, probes, revisions
from reserve.schema.swap import changelog
from reserve.schema.swap import state as swap_state
from reserve.stats import quantile

log = logging.getLogger("reserve.operations.monitor")

GUARD = guards.NEW_GUARD
OVERLAP_SCAN_LIMIT = 100
PROBE_P95_LIMIT_MS = 100.0
RETENTION_DAYS = 30
REPLAY_LAG_LIMIT_S = 300.0  # the window's replayer runs every few seconds (pg_cron: every minute before 1.5)
WINDOW_DAYS = 7  # the observation period after the online upgrade, then `reserve swap finish`
STATEMENT_TIMEOUT = "30s"
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class WindowReading:
    """The online swap's window (reserve.schema.swap): open or not, the rollback instant or not, since when."""

    phase: str | None  # None: no swap in flight and no window open
    conflicts: int = 0
    age_s: float | None = None
    log_rows: int = 0  # the change log's rows not replayed yet
    replay_lag_s: float = 0.0  # how long the oldest of them has waited

    @property
    def open(self) -> bool:
        return self.phase == swap_state.WINDOW

    @property
    def rollback_instant(self) -> bool:
        return self.open and not self.conflicts


@dataclass
class Reading:
    """One pass of the monitoring queries."""

    revision: str | None
    guard_present: bool
    guard_valid: bool
    overlapping_pairs: int | None  # None: not scanned (the validated guard proves 0)
    overlap_sample: list[tuple[str, str]] = field(default_factory=list)
    evidence_rows: int | None = None  # None: no booking_confirmation_results table at this revision
    evidence_last_hour: int | None = None
    evidence_oldest_age_s: float | None = None
    evidence_per_day: list[tuple[str, int]] = field(default_factory=list)
    cache_hits_24h: int | None = None  # None: no confirmation_cache_events table at this revision
    cache_misses_24h: int | None = None
    cache_hits_7d: int | None = None
    cache_misses_7d: int | None = None
    probe_ms: list[float] = field(default_factory=list)
    window: WindowReading | None = None  # None: the swap's state could not be read (no privilege on reserve_swap)

    @property
    def overlaps(self) -> int:
        """Overlapping pairs, scanned or proved (0 when the validated guard is in place)."""
        return self.overlapping_pairs if self.overlapping_pairs is not None else 0

    @staticmethod
    def ratio(hits: int | None, misses: int | None) -> float | None:
        if hits is None or misses is None or hits + misses == 0:
            return None
        return hits / (hits + misses)

    def probe_quantile(self, q: float) -> float | None:
        """A percentile of this reading's probe runs (reserve.stats), None without runs."""
        return quantile(self.probe_ms, q) if self.probe_ms else None


def read(conn: psycopg.Connection[Any], *, probe_runs: int = 5, always_scan: bool = False) -> Reading:
    """Run the monitoring queries on ``conn`` (autocommit, read-only)."""
    present = conn.execute(
        "SELECT count(*) > 0 FROM pg_constraint WHERE conrelid = 'public.allocations'::regclass AND conname = %s",
        (GUARD.name,),
    ).fetchone()[0]
    valid = guards.is_in_place(conn, GUARD)
    reading = Reading(revisions.current_revision(conn), present, valid, None)
    if always_scan or not valid:
        pairs = guards.find_violations(conn, GUARD, limit=OVERLAP_SCAN_LIMIT)
        reading.overlapping_pairs, reading.overlap_sample = len(pairs), pairs[:5]

    if db.table_exists(conn, "public.booking_confirmation_results"):
        rows, last_hour, oldest = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE checked_at > now() - interval '1 hour'), "
            "extract(epoch FROM now() - min(checked_at))::float8 FROM public.booking_confirmation_results"
        ).fetchone()
        reading.evidence_rows, reading.evidence_last_hour, reading.evidence_oldest_age_s = rows, last_hour, oldest
        reading.evidence_per_day = [(str(day), count) for day, count in conn.execute(
            "SELECT days.day, count(r.checked_at) "
            "FROM (SELECT (now() AT TIME ZONE 'UTC')::date - g AS day FROM generate_series(0, 6) AS g) AS days "
            "LEFT JOIN public.booking_confirmation_results r "
            "  ON r.checked_at >= days.day::timestamp AT TIME ZONE 'UTC' "
            " AND r.checked_at < (days.day + 1)::timestamp AT TIME ZONE 'UTC' "
            "GROUP BY 1 ORDER BY 1"
        )]
    if db.table_exists(conn, "public.confirmation_cache_events"):
        (reading.cache_hits_24h, reading.cache_misses_24h,
         reading.cache_hits_7d, reading.cache_misses_7d) = conn.execute(
            "SELECT count(*) FILTER (WHERE outcome = 'hit' AND recorded_at > now() - interval '24 hours'), "
            "       count(*) FILTER (WHERE outcome = 'miss' AND recorded_at > now() - interval '24 hours'), "
            "       count(*) FILTER (WHERE outcome = 'hit'), count(*) FILTER (WHERE outcome = 'miss') "
            "FROM public.confirmation_cache_events WHERE recorded_at > now() - interval '7 days'"
        ).fetchone()

    reading.window = read_window(conn)
    params = probes.sample_parameters(conn)
    if params["restaurant_id"] is not None and probe_runs > 0:
        conn.execute(probes.RESTAURANT_SCOPED, params, prepare=True).fetchall()  # warm-up, plans the statement
        for _ in range(probe_runs):
            started = time.perf_counter()
            conn.execute(probes.RESTAURANT_SCOPED, params, prepare=True).fetchall()
            reading.probe_ms.append((time.perf_counter() - started) * 1000)
    return reading


def read_window(conn: psycopg.Connection[Any]) -> WindowReading | None:
    """The swap's window; None when this role may not read reserve_swap (it grants nothing to anyone)."""
    try:
        found = swap_state.read(conn)
    except psycopg.errors.InsufficientPrivilege:
        return None
    if found is None:
        return WindowReading(None)
    age = None
    if found.window_opened_at is not None:
        age = conn.execute("SELECT extract(epoch FROM now() - %s)::float8", (found.window_opened_at,)).fetchone()[0]
    depth = changelog.depth(conn)
    return WindowReading(found.phase, found.conflicts, age, depth.rows, depth.lag_s)


def _connect(url: URL) -> psycopg.Connection[Any]:
    conn = db.connect(url, autocommit=True)
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (STATEMENT_TIMEOUT,))
    return conn


# ---------------------------------------------------------------- --once


def once(url: URL, *, probe_runs: int = 50) -> Report:
    """The monitoring queries as a report; raises db.ConnectionFailed (exit 2)."""
    report = Report("monitor")
    with _connect(url) as conn:
        r = read(conn, probe_runs=probe_runs, always_scan=True)
    report.facts.update({"database": db.masked(url), "revision": r.revision or "none"})
    report.add("guard", OK if r.guard_valid else FAIL,
               f"{GUARD.name} present and valid" if r.guard_valid else
               f"{GUARD.name} {'present but not valid or not as defined' if r.guard_present else 'missing'}",
               present=r.guard_present, valid=r.guard_valid)
    report.add("overlapping allocations", FAIL if r.overlaps else OK,
               f"{r.overlaps}{'+' if r.overlaps == OVERLAP_SCAN_LIMIT else ''} pair(s), e.g. {r.overlap_sample}"
               if r.overlaps else "0", pairs=r.overlaps, sample=r.overlap_sample)
    if r.evidence_rows is None:
        report.add("confirmation results", WARN, "booking_confirmation_results does not exist at this revision")
    else:
        oldest_days = (r.evidence_oldest_age_s or 0) / 86400
        stale = oldest_days > RETENTION_DAYS + 1
        report.add("confirmation results", WARN if stale else OK,
                   f"{r.evidence_rows} rows, {r.evidence_last_hour} in the last hour, oldest "
                   f"{oldest_days:.1f} days" + (" (retention is not running?)" if stale else ""),
                   rows=r.evidence_rows, last_hour=r.evidence_last_hour, oldest_age_s=r.evidence_oldest_age_s)
        report.add("confirmations per day", OK, ", ".join(f"{day} {count}" for day, count in r.evidence_per_day),
                   per_day=dict(r.evidence_per_day))
    if r.cache_hits_24h is None:
        report.add("cache hit ratio", WARN, "confirmation_cache_events does not exist at this revision")
    else:
        day, week = Reading.ratio(r.cache_hits_24h, r.cache_misses_24h), Reading.ratio(r.cache_hits_7d, r.cache_misses_7d)
        report.add("cache hit ratio", OK,
                   f"24 h: {_percent(day)} ({r.cache_hits_24h} hits, {r.cache_misses_24h} misses); "
                   f"7 days: {_percent(week)} ({r.cache_hits_7d} hits, {r.cache_misses_7d} misses)",
                   ratio_24h=day, ratio_7d=week, hits_24h=r.cache_hits_24h, misses_24h=r.cache_misses_24h,
                   hits_7d=r.cache_hits_7d, misses_7d=r.cache_misses_7d)
    add_window(report, r.window)
    p50, p95 = r.probe_quantile(0.5), r.probe_quantile(0.95)
    if p95 is None:
        report.add("overlap probe", OK, "no allocations to probe")
    else:
        report.add("overlap probe", WARN if p95 > PROBE_P95_LIMIT_MS else OK,
                   f"p50 {p50:.3f} ms, p95 {p95:.3f} ms over {len(r.probe_ms)} runs (limit {PROBE_P95_LIMIT_MS:g} ms)",
                   p50_ms=p50, p95_ms=p95, runs=len(r.probe_ms))
    return report


def add_window(report: Report, w: WindowReading | None) -> None:
    if w is None:
        report.add("swap window", WARN, "reserve_swap is not readable by this role (it grants nothing to anyone)")
    elif w.phase is None:
        report.add("swap window", OK, "closed: no online swap in flight")
    elif not w.open:
        report.add("swap window", WARN, f"an online swap is in flight or left a table to drop (phase: {w.phase}): "
                   "`reserve swap status`", phase=w.phase)
    else:
        days = (w.age_s or 0) / 86400
        late = days > WINDOW_DAYS
        behind = w.replay_lag_s > REPLAY_LAG_LIMIT_S
        detail = (f"open for {days:.1f} days; rollback " + ("instant" if w.rollback_instant else
                  f"not instant ({w.conflicts} conflict(s): `reserve swap status`)")
                  + f"; change log {w.log_rows} rows, replay lag {w.replay_lag_s:.0f}s"
                  + (" (is the pg_cron job or `reserve swap follow` running?)" if behind else "")
                  + ("; past the observation period: `reserve swap finish`" if late else ""))
        report.add("swap window", WARN if late or behind or not w.rollback_instant else OK, detail, phase=w.phase,
                   conflicts=w.conflicts, age_s=w.age_s, rollback_instant=w.rollback_instant, log_rows=w.log_rows,
                   replay_lag_s=w.replay_lag_s)


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1%}"


def render_table(report: Report, width: int | None = None) -> str:
    """The report as a table of the monitoring queries: check, status, value."""
    heading = f"reserve monitor  {report.facts.get('database', '')}  revision {report.facts.get('revision', '?')}"
    rows = [(c.name, c.status.upper(), c.detail) for c in report.checks]
    return f"{heading}\n{table(('check', 'status', 'value'), rows, width=width)}verdict: {report.verdict.upper()}"


# ---------------------------------------------------------------- --serve


class DatabaseCollector(Collector):
    """Reads the database at scrape time, at most every ``min_interval`` seconds (later scrapes reuse it)."""

    def __init__(self, url: URL, *, min_interval: float = 30.0, probe_runs: int = 5) -> None:
        self.url, self.min_interval, self.probe_runs = url, min_interval, probe_runs
        self._lock = threading.Lock()
        self._last: Reading | None = None
        self._last_at = -math.inf
        self._up = False
        self._probe = Histogram("reserve_overlap_probe_duration_seconds",
                                "Wall time of the restaurant-scoped overlap probe, run by the exporter at each reading.",
                                buckets=PROBE_BUCKETS, registry=None)

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_at < self.min_interval:
                return
            self._last_at = time.monotonic()
            try:
                with _connect(self.url) as conn:
                    self._last = read(conn, probe_runs=self.probe_runs)
                self._up = True
            except (db.ConnectionFailed, psycopg.Error) as exc:
                self._up = False
                log.warning("monitor reading failed: %s", db.scrub(str(exc).strip().splitlines()[0], self.url))
                return
            for ms in self._last.probe_ms:
                self._probe.observe(ms / 1000)

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None, up=False))

    def collect(self) -> Iterator[Metric]:
        self._refresh()
        yield from self._families(self._last if self._up else None, up=self._up)
        yield from self._probe.collect()

    def _families(self, r: Reading | None, *, up: bool) -> list[Metric]:
        def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
            if value is not None:
                family.add_metric(list((labels or {}).values()), value)
            return family

        guard = {"guard": GUARD.name}
        known = r is not None
        cache = GaugeMetricFamily("reserve_confirm_cache_lookups",
                                  "Confirm-client lookups in the last 24 h, by outcome (hit: served from evidence).",
                                  labels=["outcome"])
        if known and r.cache_hits_24h is not None:
            cache.add_metric(["hit"], r.cache_hits_24h)
            cache.add_metric(["miss"], r.cache_misses_24h)
        ratio = Reading.ratio(r.cache_hits_24h, r.cache_misses_24h) if known else None
        w = r.window if known else None
        return [
            gauge("reserve_database_up", "1 when the last reading of the database succeeded.", 1 if up else 0),
            gauge("reserve_overlapping_allocations",
                  "Pairs of live allocations on one resource of one restaurant at once (must be 0).",
                  r.overlaps if known else None),
            gauge("reserve_guard_present", "1 when the overlap guard constraint exists on allocations.",
                  int(r.guard_present) if known else None, guard),
            gauge("reserve_guard_valid", "1 when the overlap guard exists exactly as defined and is validated.",
                  int(r.guard_valid) if known else None, guard),
            gauge("reserve_confirmation_results_rows", "Rows in booking_confirmation_results.",
                  r.evidence_rows if known else None),
            gauge("reserve_confirmation_results_last_hour", "Evidence rows written in the last hour.",
                  r.evidence_last_hour if known else None),
            gauge("reserve_confirmation_results_oldest_age_seconds", "Age of the oldest evidence row.",
                  r.evidence_oldest_age_s if known else None),
            cache,
            gauge("reserve_confirm_cache_hit_ratio", "Hits / (hits + misses) of the confirm client over the last 24 h.",
                  ratio),
            gauge("reserve_swap_window_open", "1 while the online swap's window is open (the previous table in step).",
                  None if w is None else int(w.open)),
            gauge("reserve_swap_rollback_instant",
                  "1 when `alembic downgrade -1` is an exchange back (window open, no recorded conflict).",
                  None if w is None else int(w.rollback_instant)),
            gauge("reserve_swap_conflicts", "Allocations the previous table could not take (the rollback refuses).",
                  None if w is None else w.conflicts),
            gauge("reserve_swap_window_age_seconds", "Since when the online swap's window is open.",
                  w.age_s if w is not None and w.open else None),
            gauge("reserve_swap_log_rows", "Rows of the online swap's change log not replayed yet.",
                  w.log_rows if w is not None and w.phase is not None else None),
            gauge("reserve_swap_replay_lag_seconds", "How long the oldest unreplayed change-log row has waited.",
                  w.replay_lag_s if w is not None and w.phase is not None else None),
        ]


def build_registry(url: URL, *, min_interval: float = 30.0, probe_runs: int = 5) -> CollectorRegistry:
    """A registry with the database collector and the confirm client's metrics of this process."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(url, min_interval=min_interval, probe_runs=probe_runs))
    registry.register(confirm.CONFIRM_SECONDS)
    registry.register(confirm.CONFIRM_ERRORS)
    return registry


class PortInUse(OSError):
    """The exporter's port is taken."""


@dataclass
class Exporter:
    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_exporter(url: URL, port: int, *, host: str = "127.0.0.1", min_interval: float = 30.0,
                   probe_runs: int = 5) -> Exporter:
    """Serve /metrics on ``host:port`` in a daemon thread (port 0: any free port). Raises PortInUse."""
    registry = build_registry(url, min_interval=min_interval, probe_runs=probe_runs)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, f"port {port} on {host} is already in use: stop what holds it "
                                       "or pass another port to --serve") from None
        raise
    return Exporter(server, thread, host, server.server_address[1])


def serve(url: URL, port: int, *, min_interval: float = 30.0, probe_runs: int = 5,
          ready: Any = print, stop: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM). Checks the database once first."""
    _connect(url).close()  # fail fast (db.ConnectionFailed) instead of serving database_up 0 forever
    exporter = start_exporter(url, port, min_interval=min_interval, probe_runs=probe_runs)
    ready(f"serving metrics on {exporter.url} (database {db.masked(url)}, readings at most every {min_interval:g}s)")
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        exporter.stop()

