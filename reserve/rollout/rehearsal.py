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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import UsageError, table
from reserve.rollout import access, alembic_runner, dataset, qa, snapshots, timeline
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.rollout.lockwatch import LockWatch, reported_holds
from reserve.rollout.preflight import preflight
from reserve.rollout.scratch import scratch_database
from reserve.rollout.standby import StandbyWatch
from reserve.rollout.verify import verify
from reserve.schema import locktrace, probes, revisions
from reserve.schema.guards import NEW_GUARD

DEFAULT_ROWS = 100_000
ARTIFACTS = (
    "pre-migration-state.txt", "post-migration-state.txt", "db-diff.txt", "migration-output.log",
    "new-constraint.txt", "new-table.txt", "performance-test.txt", "tests.txt", "locks.txt", "access-before.txt",
    "access-after.txt", "access-diff.txt", "summary.json", "SUMMARY.md",
)


class RehearsalSetupError(UsageError):
    """The rehearsal could not start (output directory, database creation): exit 2."""


class StepFailed(Exception):
    """A step ran and its outcome is a no-go."""


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    lock_hold_s: float | None = None  # the longest ACCESS EXCLUSIVE hold on allocations, polled or reported
    # The holds the online swap timed itself (lock granted to commit): shorter than one poll, often.
    reported_holds: list[dict[str, Any]] | None = None
    lock_retries: int | None = None  # lock attempts that timed out and were retried (the soak counts them)
    wal_bytes: int | None = None  # WAL the server wrote during the step (pg_current_wal_lsn before and after)
    # For a migration step: statements traced, the strongest lock per table, locks beyond the declaration.
    lock_trace: dict[str, Any] | None = None
    started_s: float = 0.0  # since the rehearsal's first step began
    # With a standby: what it saw during the step and until it had replayed the step's WAL
    # (reserve.rollout.standby.StandbyFigures).
    standby: dict[str, Any] | None = None


@dataclass
class Result:
    out: Path
    steps: list[Step] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def render(self, width: int | None = None) -> str:
        rows = [("ok" if step.ok else "FAIL", step.name, f"{step.seconds:.2f}",
                 _held(step.lock_hold_s), step.detail) for step in self.steps]
        verdict = self.summary.get("verdict", "no-go")
        failed = self.summary.get("failed_step")
        return (table(("result", "step", "seconds", "ACCESS EXCLUSIVE held (s)", "detail"), rows, width=width)
                + f"verdict: {verdict.upper()}" + (f" (failed step: {failed})" if failed else "")
                + f"\nevidence: {self.out}")


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


def _held(seconds: float | None) -> str:
    """A hold as the bundle shows it: milliseconds resolve the online exchange, seconds the locked build."""
    return "" if seconds is None else f"{seconds:.3f}"


def rehearse(url: URL | None = None, *, rows: int = DEFAULT_ROWS, out_dir: Path = Path("artifacts"),
             progress: bool = True, swap_method: str = "online", standby: bool = False) -> Result:
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
            facts["standby"] = _standby_summary(result.steps, watch)
            facts["lag_series"] = watch.lag_series(facts["origin"])
    facts["swap_method"] = swap_method
    facts["timeline"] = timeline.plot([asdict(s) for s in result.steps], out / timeline.PLOT,
                                      lag=facts.get("lag_series"))
    result.summary = _summary(result, facts, rows)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "SUMMARY.md").write_text(_human_summary(result), encoding="utf-8")
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
                          lock_trace=_trace_summary(traces[name]) if name in traces else None,
                          started_s=round(started - origin, 3),
                          standby=seen[0].as_dict() if seen else None)
            result.steps.append(record)
            log.info("step %s: %s in %.2fs %s", name, "ok" if ok else "FAILED", seconds, detail)
        console.print(f"{'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {name} ({seconds:.2f}s) {detail}"
                      + (f" — standby: {_standby_line(record.standby)}" if record.standby else ""))
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
        (out / "locks.txt").write_text(_render_traces(traces), encoding="utf-8")


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
    reserve.rollout.access.DECLARED."""
    before = (out / "access-before.txt").read_text(encoding="utf-8")
    after = (out / "access-after.txt").read_text(encoding="utf-8")
    text = snapshots.diff(before, after, "access-before.txt", "access-after.txt")
    (out / "access-diff.txt").write_text(text or "no differences\n", encoding="utf-8")
    found = access.widened(before, after)
    beyond = access.undeclared(found)
    if beyond:
        raise StepFailed(f"{len(beyond)} widened access(es) not declared in reserve/rollout/access.py DECLARED: "
                         + "; ".join(map(str, beyond[:5])))
    return f"{len(found)} widened access(es), each declared with its reason"


def _standby_line(seen: dict[str, Any]) -> str:
    """A step's standby figures in one line (console and SUMMARY.md)."""
    caught = f"caught up {seen['caught_up_after_s']:.2f}s after" if seen["caught_up"] else "NOT caught up"
    return (f"longest read {seen['longest_read_s']:.3f}s, lag peak {seen['replay_lag_peak_s']:.2f}s, {caught}, "
            f"{seen['cancelled_reads']} cancelled, {sum(seen['recovery_conflicts'].values())} conflicts")


def _standby_summary(steps: list[Step], watch: StandbyWatch) -> dict[str, Any]:
    """The whole rehearsal as the standby saw it: its settings, and the worst of every step."""
    seen = [(s.name, s.standby) for s in steps if s.standby]

    def worst(key: str) -> tuple[str | None, Any]:
        return max(((name, f[key]) for name, f in seen if f[key] is not None), key=lambda p: p[1],
                   default=(None, None))

    longest_step, longest = worst("longest_read_s")
    lag_step, lag = worst("replay_lag_peak_s")
    return {
        "settings": watch.settings(),
        "reads": sum(f["reads"] for _, f in seen),
        "longest_read_s": longest, "longest_read_step": longest_step,
        "replay_lag_peak_s": lag, "replay_lag_peak_step": lag_step,
        "cancelled_reads": sum(f["cancelled_reads"] for _, f in seen),
        "recovery_conflicts": sum(sum(f["recovery_conflicts"].values()) for _, f in seen),
        "not_caught_up": [name for name, f in seen if not f["caught_up"]],
        "read": "one restaurant's tables in a two-hour window (reserve.schema.probes.RESTAURANT_SCOPED), "
                "one read after another on the standby",
    }


def _trace_summary(trace: locktrace.LockTrace) -> dict[str, Any]:
    """A migration step's lock trace in summary.json: per revision, statements and the strongest lock per table."""
    return {
        "statements": trace.statement_count,
        "revisions": {step.step: {"statements": len(step.statements), "strongest": step.strongest(),
                                  "completed": step.completed} for step in trace.steps},
        "undeclared": trace.undeclared(),
    }


def _render_traces(traces: dict[str, locktrace.LockTrace]) -> str:
    """locks.txt: the lock trace of every migration step, in the order they ran."""
    header = ("# The table locks the migrating session held after each statement (reserve.schema.locktrace),\n"
              "# checked against what each revision declares (reserve.schema.locks.DECLARED).\n\n")
    return header + "\n".join(f"## rehearsal step: {name}\n\n{trace.render()}" for name, trace in traces.items())


def _summary(result: Result, facts: dict[str, Any], rows: int) -> dict[str, Any]:
    failed = next((s.name for s in result.steps if not s.ok), None)
    locks = {s.name: s.lock_hold_s for s in result.steps if s.lock_hold_s is not None}
    return {
        "verdict": "go" if failed is None and result.steps else "no-go",
        "failed_step": failed,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requested_rows": rows,
        "rows": facts.get("rows"),
        "steps": [asdict(s) for s in result.steps],
        "lock_hold_s": locks,
        "lock_trace_statements": sum((s.lock_trace or {}).get("statements", 0) for s in result.steps),
        "swap_method": facts.get("swap_method"),
        "standby": facts.get("standby"),
        "timeline": timeline.PLOT if facts.get("timeline") is None else None,
        "timeline_skipped": facts.get("timeline"),
        "predicted_lock_hold_s": (facts.get("preflight") or {}).get("facts", {}).get("predicted_lock_hold_s"),
        "predicted_background_s": (facts.get("preflight") or {}).get("facts", {}).get("predicted_background_s"),
        "probe_ms": facts.get("probe"),
        "qa": facts.get("qa"),
        "artifacts": [name for name in ARTIFACTS if (result.out / name).exists() or name in ("summary.json", "SUMMARY.md")],
    }


def _standby_markdown(steps: list[Step], overall: dict[str, Any] | None) -> list[str]:
    """SUMMARY.md's section on the hot standby, when the rehearsal had one."""
    if not overall:
        return []
    settings = ", ".join(f"{k} = {v}" for k, v in sorted(overall["settings"].items()))
    lines = ["## What the hot standby saw", "",
             f"A streaming replica of the throw-away server ({settings}); the reader: {overall['read']}.", "",
             "| step | WAL (MB) | replay lag peak (s) | caught up after (s) | reads | longest read (s) | cancelled "
             "| recovery conflicts |", "|---|---|---|---|---|---|---|---|"]
    for step in steps:
        f = step.standby
        if not f:
            continue
        wal = "" if step.wal_bytes is None else f"{step.wal_bytes / 1e6:.1f}"
        caught = f"{f['caught_up_after_s']:.2f}" if f["caught_up"] else "**not caught up**"
        conflicts = ", ".join(f"{k[6:]} {v}" for k, v in f["recovery_conflicts"].items()) or "0"
        lines.append(f"| {step.name} | {wal} | {f['replay_lag_peak_s']:.2f} | {caught} | {f['reads']} | "
                     f"{f['longest_read_s']:.3f} | {f['cancelled_reads']} | {conflicts} |")
    lines += ["", f"Longest standby read: {overall['longest_read_s']} s (step `{overall['longest_read_step']}`); "
              f"peak replay lag {overall['replay_lag_peak_s']} s (step `{overall['replay_lag_peak_step']}`); "
              f"{overall['cancelled_reads']} reads cancelled, {overall['recovery_conflicts']} recovery conflicts. "
              "What to set on replicas: docs/OPERATIONS.md, section 9.", ""]
    return lines


def _human_summary(result: Result) -> str:
    s = result.summary
    lines = [
        "# Rehearsal of the capacity-overlap rollout", "",
        f"**Verdict: {s['verdict'].upper()}**" + (f" — failed step: `{s['failed_step']}`" if s["failed_step"] else ""),
        "", f"Generated {s['generated_at']} on a throw-away database with {s['rows'] or s['requested_rows']} rows.", "",
        "| step | result | seconds | ACCESS EXCLUSIVE held (s) | WAL (MB) | detail |", "|---|---|---|---|---|---|",
    ]
    for step in result.steps:
        lock = _held(step.lock_hold_s)
        wal = "" if step.wal_bytes is None else f"{step.wal_bytes / 1e6:.1f}"
        lines.append(f"| {step.name} | {'ok' if step.ok else 'FAIL'} | {step.seconds:.2f} | {lock} | {wal} | "
                     f"{step.detail} |")
    lines += ["", f"Swap method: {s['swap_method']}. Predicted lock hold of the swap (preflight): "
              f"{s['predicted_lock_hold_s']} s" + (f", background {s['predicted_background_s']} s"
                                                  if s.get("predicted_background_s") is not None else "") + ".",
              "Per-statement locks of every migration step: `locks.txt`.", "",
              *_standby_markdown(result.steps, s.get("standby")),
              f"![timeline]({timeline.PLOT})" if s.get("timeline") else f"Timeline: {s.get('timeline_skipped')}.",
              "", "Files: " + ", ".join(f"`{a}`" for a in s["artifacts"]), ""]
    return "\n".join(lines)
