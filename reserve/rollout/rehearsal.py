"""The rehearsal: the whole rollout, timed, on a throw-away database, with its evidence bundle.

On a throw-away server (or a new database on the server of DATABASE_URL):
baseline, a generated dataset, preflight, snapshot, upgrade revision by
revision (timing each and the lock hold, seen from the database), verify,
the overlap probes, the emergency rollback (timed), verify, upgrade again,
snapshot, diff, then the QA flows against the rehearsed database. With
``standby=True`` the throw-away server gets a hot standby
(reserve.rollout.standby): every step also reports what the replicas saw
(replay lag, the longest read of allocations there, cancellations). Every
file of the evidence bundle goes to ``<out>/<UTC timestamp>/``; none holds a
password or a row's personal content (ids, definitions and counts only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import UsageError
from reserve.rollout import access, alembic_runner, dataset, evidence, qa, snapshots, timeline
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.rollout.evidence import Result, Step
from reserve.rollout.lockwatch import LockWatch, reported_holds
from reserve.rollout.preflight import preflight
from reserve.rollout.scratch import scratch_database
from reserve.rollout.standby import StandbyWatch
from reserve.rollout.verify import verify
from reserve.schema import locktrace, probes, revisions
from reserve.schema.guards import NEW_GUARD
from reserve.schema.options import DEFAULT_SWAP_METHOD

DEFAULT_ROWS = 100_000


class RehearsalSetupError(UsageError):
    """The rehearsal could not start (output directory, database creation): exit 2."""


class StepFailed(Exception):
    """A step ran and its outcome is a no-go."""


class _Scrub(logging.Filter):
    def __init__(self, url: URL) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = db.scrub(record.getMessage(), self.url)
        record.args = ()
        return True


@contextmanager
def _capture_logs(path: Path, url: URL) -> Iterator[logging.Handler]:
    """Alembic's and this package's log lines, password scrubbed, into migration-output.log."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    handler.addFilter(_Scrub(url))
    loggers = [logging.getLogger(name) for name in ("alembic", "reserve")]
    previous = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield handler
    finally:
        for lg, (level, propagate) in zip(loggers, previous, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        handler.close()


def _output_dir(out_dir: Path) -> Path:
    """``<out_dir>/<UTC timestamp>``, made new; a second run in the same second gets ``-2``, ``-3``…"""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 100):
        target = out_dir / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            target.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RehearsalSetupError(f"cannot write the evidence bundle to {target}: {exc.strerror}") from None
        try:
            (target / ".write-test").write_text("")
            (target / ".write-test").unlink()
        except OSError as exc:
            raise RehearsalSetupError(f"cannot write the evidence bundle to {target}: {exc.strerror}") from None
        return target
    raise RehearsalSetupError(f"cannot find a new directory for the evidence bundle in {out_dir}")


def rehearse(url: URL | None = None, *, rows: int = DEFAULT_ROWS, out_dir: Path = Path("artifacts"),
             progress: bool = True, swap_method: str = DEFAULT_SWAP_METHOD, standby: bool = False) -> Result:
    """Rehearse the rollout end to end with the swap's ``swap_method`` (online, the default, or locked), with a
    hot standby of the throw-away server when ``standby``; the Result's summary says go or no-go and which step
    failed."""
    if standby and url is not None:
        raise RehearsalSetupError("--standby rehearses on the throw-away server it starts with its replica; "
                                  "it cannot make a replica of DATABASE_URL's server (drop --use-database-url)")
    x = [f"swap_method={swap_method}"]
    out = _output_dir(out_dir)
    result = Result(out)
    console = Console(stderr=True, quiet=not progress)
    facts: dict[str, Any] = {}
    with ExitStack() as servers:
        replica = None
        if standby:
            # Commits flush at once (no fsync here, so it costs nothing): the lag is replay, not the WAL writer's
            # 200 ms of asynchronous commit.
            primary = servers.enter_context(EphemeralPostgres(settings={"synchronous_commit": "on"}))
            replica = servers.enter_context(primary.standby())
            url = primary.url()
        target = servers.enter_context(scratch_database(url, "reserve_rehearsal"))
        servers.enter_context(_capture_logs(out / "migration-output.log", target))
        watch = servers.enter_context(StandbyWatch(target, replica.url(target.database))) if replica else None
        _run_steps(result, target, watch, console, facts, rows=rows, swap_method=swap_method, x=x)
        if watch is not None:
            facts["standby"] = evidence.standby_summary(result.steps, watch)
            facts["lag_series"] = watch.lag_series(facts["origin"])
    facts["swap_method"] = swap_method
    facts["timeline"] = timeline.plot([asdict(s) for s in result.steps], out / timeline.PLOT,
                                      lag=facts.get("lag_series"))
    result.summary = evidence.summary(result, facts, rows)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "SUMMARY.md").write_text(evidence.human_summary(result), encoding="utf-8")
    return result


def _run_steps(result: Result, target: URL, watch: StandbyWatch | None, console: Console, facts: dict[str, Any], *,
               rows: int, swap_method: str, x: list[str]) -> None:
    """Every step of the plan, in order, until the first that fails; each recorded in ``result.steps``."""
    out = result.out
    log = logging.getLogger("reserve.rollout.rehearsal")
    head = revisions.head()
    facts["origin"] = origin = time.perf_counter()

    traces: dict[str, locktrace.LockTrace] = {}

    def step(name: str, action: Callable[[], str | None], watch_lock: bool = False) -> None:
        with console.status(f"[bold]{name}[/bold]…"):
            log.info("step %s: start", name)
            started = time.perf_counter()
            lock = reported = seen = None
            seconds: float | None = None
            wal_before = _wal_lsn(target)
            try:
                with ExitStack() as stack:
                    if watch is not None:  # exits last: waits for the standby to replay the step
                        seen = stack.enter_context(watch.measure())
                    if watch_lock:
                        lock = stack.enter_context(LockWatch(target))
                        reported = stack.enter_context(reported_holds())
                    detail = action() or ""
                    seconds = time.perf_counter() - started
                beyond = traces[name].undeclared() if name in traces else []
                if beyond:
                    raise StepFailed(f"took locks its revision does not declare: {'; '.join(beyond[:3])}")
                ok = True
            except Exception as exc:  # every failure is reported with its step, never swallowed
                detail, ok = db.scrub(f"{type(exc).__name__}: {exc}", target).splitlines()[0], False
            if seconds is None:
                seconds = time.perf_counter() - started
            record = Step(name, ok, round(seconds, 3), detail, wal_bytes=_wal_since(target, wal_before),
                          lock_hold_s=round(max(lock.longest_s, reported.longest_s), 4) if lock and reported
                          else None,
                          reported_holds=reported.as_list() if reported else None,
                          lock_trace=evidence.trace_summary(traces[name]) if name in traces else None,
                          started_s=round(started - origin, 3),
                          standby=seen[0].as_dict() if seen else None)
            result.steps.append(record)
            log.info("step %s: %s in %.2fs %s", name, "ok" if ok else "FAILED", seconds, detail)
        console.print(f"{'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {name} ({seconds:.2f}s) {detail}"
                      + (f" — standby: {evidence.standby_line(record.standby)}" if record.standby else ""))
        if not ok:
            raise StepFailed(name)

    def connect() -> psycopg.Connection[Any]:
        return db.connect(target, autocommit=True)

    def migrate(name: str, run: Callable[..., None], revision: str, done: str) -> Callable[[], str]:
        def action() -> str:
            traces[name] = locktrace.LockTrace()
            run(target, revision, x, trace=traces[name])
            return done
        return action

    def load_dataset() -> str:
        with connect() as conn:
            counts = dataset.generate(conn, dataset.Shape.for_rows(rows))
        facts["rows"] = counts
        return f"{counts['allocations']} allocations, {counts['bookings']} bookings"

    def run_preflight() -> str:
        report = preflight(target, "head", backup_confirmed=True, swap_method=swap_method)
        facts["preflight"] = report.as_dict()
        log.info("preflight:\n%s", report.to_text())
        if report.failures:
            raise StepFailed("; ".join(f"{c.name}: {c.detail}" for c in report.failures))
        background = report.facts.get("predicted_background_s")
        return (f"go; predicted lock hold {report.facts.get('predicted_lock_hold_s')}s ({swap_method})"
                + (f", {background}s in the background" if background is not None else ""))

    def write_snapshot(filename: str) -> Callable[[], str]:
        def action() -> str:
            with connect() as conn:
                (out / filename).write_text(snapshots.capture(conn), encoding="utf-8")
            return filename
        return action

    def run_verify(expect: str) -> Callable[[], str]:
        def action() -> str:
            report = verify(target)
            log.info("verify:\n%s", report.to_text())
            if report.facts.get("revision") != expect or report.failures:
                raise StepFailed("; ".join(f"{c.name}: {c.detail}" for c in report.failures) or "wrong revision")
            return f"at {expect}, catalog as expected, probe served by the GiST index"
        return action

    def performance() -> str:
        with connect() as conn:
            params = probes.sample_parameters(conn)
            scoped = probes.latency_ms(conn, probes.RESTAURANT_SCOPED, params)
            point = probes.latency_ms(conn, probes.POINT, params)
            text = [
                f"allocations rows: {facts['rows']['allocations']}",
                f"restaurant-scoped probe: p50 {scoped['p50_ms']} ms, p95 {scoped['p95_ms']} ms over {scoped['runs']} runs",
                f"point probe: p50 {point['p50_ms']} ms, p95 {point['p95_ms']} ms over {point['runs']} runs",
                "", "EXPLAIN (ANALYZE, BUFFERS) restaurant-scoped probe:",
                probes.plan(conn, probes.RESTAURANT_SCOPED, params),
                "", "EXPLAIN (ANALYZE, BUFFERS) point probe:", probes.plan(conn, probes.POINT, params),
            ]
        (out / "performance-test.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
        facts["probe"] = {"restaurant_scoped": scoped, "point": point}
        return f"restaurant-scoped p95 {scoped['p95_ms']} ms, point p95 {point['p95_ms']} ms"

    def describe_new_objects() -> str:
        with connect() as conn:
            constraint = conn.execute(
                "SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                (NEW_GUARD.name,)).fetchone()[0]
            index = conn.execute("SELECT pg_get_indexdef(%s::regclass), pg_size_pretty(pg_relation_size(%s::regclass))",
                                 (NEW_GUARD.name, NEW_GUARD.name)).fetchone()
            (out / "new-constraint.txt").write_text(
                f"{constraint}\nindex: {index[0]}\nindex size: {index[1]}\n", encoding="utf-8")
            table = snapshots.capture(conn)
        lines = [line for line in table.splitlines()
                 if "booking_confirmation_results" in line or line.startswith("[")]
        (out / "new-table.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return "new-constraint.txt, new-table.txt"

    def write_access(filename: str) -> Callable[[], str]:
        def action() -> str:
            with connect() as conn:
                (out / filename).write_text(access.as_text(access.matrix(conn)), encoding="utf-8")
            return filename
        return action

    def diff_snapshots() -> str:
        before = (out / "pre-migration-state.txt").read_text(encoding="utf-8")
        after = (out / "post-migration-state.txt").read_text(encoding="utf-8")
        text = snapshots.diff(before, after, "pre-migration-state.txt", "post-migration-state.txt")
        (out / "db-diff.txt").write_text(text or "no differences\n", encoding="utf-8")
        return f"{sum(1 for line in text.splitlines() if line[:1] in '+-' and line[:3] not in ('+++', '---'))} changed lines"

    def integration_checks() -> str:
        with connect() as conn:
            flows = qa.run_flows(conn)
        (out / "tests.txt").write_text(qa.render(flows), encoding="utf-8")
        facts["qa"] = [asdict(f) for f in flows]
        failed = [f.name for f in flows if not f.passed]
        if failed:
            raise StepFailed(f"QA flows failed: {', '.join(failed)}")
        return f"{len(flows)} QA flows passed"

    plan: list[tuple[str, Callable[[], str | None], bool]] = [
        ("baseline", lambda: alembic_runner.upgrade(target, "0001_baseline") or "0001_baseline", False),
        ("dataset", load_dataset, False),
        ("preflight", run_preflight, False),
        ("snapshot before", write_snapshot("pre-migration-state.txt"), False),
        ("access before", write_access("access-before.txt"), False),
        *[(f"upgrade {rev}", migrate(f"upgrade {rev}", alembic_runner.upgrade, rev, rev), True)
          for rev in revisions.chain()[1:]],
        ("verify head", run_verify(head), False),
        ("performance probe", performance, False),
        ("downgrade -1", migrate("downgrade -1", alembic_runner.downgrade, "-1", "emergency rollback"), True),
        ("verify rollback", run_verify(revisions.chain()[-2]), False),
        ("upgrade head again", migrate("upgrade head again", alembic_runner.upgrade, "head", head), True),
        ("snapshot after", write_snapshot("post-migration-state.txt"), False),
        ("diff", diff_snapshots, False),
        ("access after", write_access("access-after.txt"), False),
        ("access", lambda: check_access(out), False),
        ("new objects", describe_new_objects, False),
        ("integration checks", integration_checks, False),
    ]
    try:
        for name, action, watch_lock in plan:
            step(name, action, watch_lock)
    except StepFailed:
        pass
    finally:
        (out / "locks.txt").write_text(evidence.render_traces(traces), encoding="utf-8")


def _wal_lsn(url: URL) -> str | None:
    try:
        with db.connect(url, autocommit=True) as conn:
            return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    except (db.ConnectionFailed, psycopg.Error):
        return None


def _wal_since(url: URL, before: str | None) -> int | None:
    if before is None:
        return None
    try:
        with db.connect(url, autocommit=True) as conn:
            return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (before,)).fetchone()[0])
    except (db.ConnectionFailed, psycopg.Error):
        return None


def check_access(out: Path) -> str:
    """access-diff.txt from the two matrices; a no-go on any widened access not declared in
    reserve.rollout.access.DECLARED_WIDENINGS."""
    before = (out / "access-before.txt").read_text(encoding="utf-8")
    after = (out / "access-after.txt").read_text(encoding="utf-8")
    text = snapshots.diff(before, after, "access-before.txt", "access-after.txt")
    (out / "access-diff.txt").write_text(text or "no differences\n", encoding="utf-8")
    found = access.widened(before, after)
    beyond = access.undeclared(found)
    if beyond:
        raise StepFailed(f"{len(beyond)} widened access(es) not declared in reserve/rollout/access.py DECLARED_WIDENINGS: "
                         + "; ".join(map(str, beyond[:5])))
    return f"{len(found)} widened access(es), each declared with its reason"
