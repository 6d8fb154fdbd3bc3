"""Live-traffic soak: the swap, its emergency rollback and the swap again, while confirmations keep coming.

Why: the rehearsal proves the chain on an idle database, but production runs
it while ``confirm_hold_assignment_tx`` is being called. This soak starts the
database one revision below head (the swap's down revision: v12 installed, old
guard) with generated data, starts N worker processes that create a hold and
confirm it in a loop (one in ``overlap_every`` deliberately overlapping an
existing allocation, so the overlap rejection happens under both guards), and
meanwhile runs ``alembic upgrade head``, ``downgrade -1``, ``upgrade head`` as
an operator would (subprocesses, ``-x`` lock options passed through).

Afterwards it checks what must hold whatever the timing: no overlapping live
allocations (the monitoring query), an evidence row for every confirmation
the clients saw succeed (v12 is installed throughout) and none for one they
saw fail, no confirmed booking without its allocation, exactly the
allocations written that were confirmed, the database at head with the
expected catalog, and no worker error but the expected ones: the overlap
rejection (on the deliberate overlaps only) and the retryable SQLSTATEs.
It reports confirmations/s per phase and the longest stall any worker saw.

Workers run in separate processes (``spawn``) so that they really run in
parallel with each other and with Alembic; their timestamps come from
``time.monotonic()``, which on Linux is one system-wide clock.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.operations.monitor import OVERLAP_SCAN_LIMIT
from reserve.report import UsageError
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import ServerError
from reserve.rollout.lockwatch import LockWatch
from reserve.rollout.scratch import scratch_database
from reserve.schema import expectations, guards, revisions

BEFORE_HEAD = revisions.chain()[-2]
CHAIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("upgrade head", ("upgrade", "head")),
    ("downgrade -1", ("downgrade", "-1")),
    ("upgrade head again", ("upgrade", "head")),
)
# Errors a client is expected to see while the guard is swapped, and to retry.
RETRYABLE = {
    "55P03": "lock_not_available",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "57014": "query_canceled",
}
GUARD_NAMES = frozenset({guards.OLD_GUARD.name, guards.NEW_GUARD.name})
APPLICATION_NAME = "reserve-soak"

HOLD_SQL = """
WITH booking AS (
  INSERT INTO public.bookings (restaurant_id, status, party_size, start_at, end_at)
  VALUES (%(restaurant)s, 'pending', 2, %(start)s, %(end)s) RETURNING id
), hold AS (
  INSERT INTO public.table_holds (restaurant_id, zone_id, booking_id, start_at, end_at, expires_at, metadata)
  SELECT %(restaurant)s, %(zone)s, id, %(start)s, %(end)s, now() + interval '10 minutes', '{"policyVersion": "soak"}'
  FROM booking RETURNING id, booking_id
), member AS (
  INSERT INTO public.table_hold_members (hold_id, table_id) SELECT id, %(table)s FROM hold
)
SELECT id, booking_id FROM hold"""
CONFIRM_SQL = (
    "SELECT count(*) FROM public.confirm_hold_assignment_tx(p_hold_id => %s, p_booking_id => %s, "
    "p_idempotency_key => %s, p_target_status => 'confirmed')"
)


class SoakSetupError(UsageError):
    """The soak could not start (wrong revision, no data, not a loopback server): exit 2."""


# ---------------------------------------------------------------- what the workers do


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker process needs; picklable, and the password stays out of its repr."""

    index: int
    workers: int
    tables: list[tuple[str, str, str]]  # (restaurant_id, zone_id, table_id)
    day0: datetime  # midnight of the dataset's day 0: its allocations are on days 1..50, 18:00-20:00
    overlap_every: int
    max_calls: int
    deadline: float  # time.monotonic() after which a worker stops whatever happens
    statement_timeout: str
    run_tag: str
    dsn: str = field(repr=False)

    def item(self, j: int) -> tuple[bool, tuple[str, str, str], datetime, datetime]:
        """The j-th hold of this worker: (overlaps an existing allocation?, table, start, end).

        Ordinary holds get a (table, day >= 60) slot no other item uses, so they
        can only fail for a retryable reason; one in ``overlap_every`` sits on
        19:00-21:00 of a dataset day, across the generated 18:00-20:00 allocation
        of that table, so it must be rejected by whichever guard is installed.
        """
        n = j * self.workers + self.index
        table = self.tables[n % len(self.tables)]
        overlap = self.overlap_every > 0 and j % self.overlap_every == self.overlap_every - 1
        if overlap:
            start = self.day0 + timedelta(days=1 + (n // len(self.tables)) % 49, hours=19)
        else:
            start = self.day0 + timedelta(days=60 + n // len(self.tables), hours=12)
        return overlap, table, start, start + timedelta(hours=2)


def classify(exc: psycopg.Error, overlap_item: bool) -> str:
    """'rejected' (the expected overlap rejection), 'retryable', or 'unexpected'.

    The overlap rejection counts as expected only on a deliberately overlapping
    item: on any other it means a guard rejected a booking it should have accepted.
    The new guard raises it inside the call (P0001 'allocations_no_overlap', from
    assign_tables_atomic_v2); the old one at commit (23P01 on its constraint).
    """
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    overlap_error = (
        (state == "23P01" and diag is not None and diag.constraint_name in GUARD_NAMES)
        or (state == "P0001" and diag is not None and diag.message_primary == guards.NEW_GUARD.name)
    )
    if overlap_error:
        return "rejected" if overlap_item else "unexpected"
    return "retryable" if state in RETRYABLE else "unexpected"


@dataclass
class WorkerLog:
    """What one worker saw: (started, ended, outcome) per call, its successes, its errors."""

    index: int
    calls: list[tuple[float, float, str]] = field(default_factory=list)  # outcome: ok/rejected/retryable/unexpected
    confirmed: list[tuple[str, str]] = field(default_factory=list)  # (booking_id, idempotency key)
    overlap_accepted: list[str] = field(default_factory=list)  # bookings confirmed across an existing allocation
    errors: Counter[str] = field(default_factory=Counter)  # SQLSTATE (or exception type) -> count
    unexpected: list[str] = field(default_factory=list)  # first few, for the report
    fatal: str | None = None


def _error_text(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    return f"{state}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def _connect_worker(plan: WorkerPlan) -> psycopg.Connection[Any]:
    conn = psycopg.connect(plan.dsn, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10)
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (plan.statement_timeout,))
    return conn


def worker_main(plan: WorkerPlan, start: Any, stop: Any, results: Any) -> None:
    """A client of the booking service: create a hold, confirm it, again, until told to stop.

    Bounded by ``plan.max_calls`` and ``plan.deadline`` as well as by ``stop``, so
    a soak can never run away. Always puts its log on ``results``.
    """
    log = WorkerLog(plan.index)
    conn: psycopg.Connection[Any] | None = None
    try:
        try:
            conn = _connect_worker(plan)
        except BaseException:
            start.abort()  # the main process stops waiting for this worker
            raise
        start.wait(timeout=120)
        for j in range(plan.max_calls):
            if stop.is_set() or time.monotonic() > plan.deadline:
                break
            if conn.closed:
                conn = _connect_worker(plan)
            overlap, (restaurant, zone, table), begin, end = plan.item(j)
            key = f"soak-{plan.run_tag}-{plan.index}-{j}"
            started = time.monotonic()
            hold = booking = None
            try:
                hold, booking = conn.execute(HOLD_SQL, {"restaurant": restaurant, "zone": zone, "table": table,
                                                        "start": begin, "end": end}).fetchone()
                conn.execute(CONFIRM_SQL, (hold, booking, key)).fetchone()
            except psycopg.Error as exc:
                outcome = classify(exc, overlap)
                log.errors[getattr(exc, "sqlstate", None) or type(exc).__name__] += 1
                if outcome == "unexpected" and len(log.unexpected) < 10:
                    log.unexpected.append(_error_text(exc))
                if hold is not None and not conn.closed:
                    try:  # the client lets the hold go; if even that fails, it expires in 10 minutes
                        conn.execute("DELETE FROM public.table_holds WHERE id = %s", (hold,))
                    except psycopg.Error:
                        pass
            else:
                outcome = "ok"
                log.confirmed.append((str(booking), key))
                if overlap:
                    log.overlap_accepted.append(str(booking))
            log.calls.append((started, time.monotonic(), outcome))
    except BaseException as exc:  # reported, never swallowed: the soak fails on it
        log.fatal = _error_text(exc)
    finally:
        if conn is not None:
            conn.close()
        results.put(log)


# ---------------------------------------------------------------- the result


@dataclass
class PhaseStats:
    name: str
    seconds: float
    confirmations: int
    rejected_overlaps: int
    retryable_errors: int
    unexpected_errors: int
    confirmations_per_s: float


@dataclass
class StepRun:
    name: str
    ok: bool
    seconds: float
    lock_hold_s: float  # longest ACCESS EXCLUSIVE hold on allocations seen from pg_locks
    lock_retries: int  # swap lock attempts that timed out and were retried
    detail: str = ""


@dataclass
class Invariants:
    """What must hold after the chain, whatever the interleaving."""

    overlapping_pairs: int  # live allocations, same restaurant/resource, overlapping windows (monitor's query)
    missing_evidence: int  # confirmations the client saw succeed without their evidence row
    phantom_evidence: int  # evidence rows of this run beyond the confirmations that succeeded
    confirmed_without_allocation: int  # confirmed bookings (dataset's and the soak's) without a live allocation
    allocations_lost: int  # live allocations missing: before + confirmed - after, when positive
    allocations_extra: int  # live allocations nobody confirmed: after - before - confirmed, when positive

    def problems(self) -> list[str]:
        return [f"{name.replace('_', ' ')}: {value}" for name, value in asdict(self).items() if value]


@dataclass
class SoakResult:
    """The soak's figures and verdict; ``asdict`` gives its JSON."""

    workers: int
    rows: int
    phase_seconds: float
    duration_s: float
    attempts: int
    confirmations: int
    rejected_overlaps: int
    phases: list[PhaseStats]
    steps: list[StepRun]
    errors_by_sqlstate: dict[str, int]
    unexpected_errors: list[str]
    longest_stall_s: float
    longest_stall_phase: str
    invariants: Invariants
    final_revision: str | None
    catalog_drift: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)

    def render(self) -> str:
        lines = [f"soak: {self.workers} workers, {self.rows} allocation rows, {self.duration_s:.1f}s, "
                 f"{self.confirmations} confirmations of {self.attempts} attempts, "
                 f"{self.rejected_overlaps} overlaps rejected"]
        lines += [f"  {p.name:<28} {p.seconds:7.2f}s {p.confirmations:7d} ok {p.confirmations_per_s:8.1f}/s"
                  f"  rejected {p.rejected_overlaps}  retryable {p.retryable_errors}  unexpected {p.unexpected_errors}"
                  for p in self.phases]
        lines += [f"  step {s.name:<23} {'ok' if s.ok else 'FAILED'} {s.seconds:6.2f}s  lock {s.lock_hold_s:.2f}s"
                  f"  retries {s.lock_retries}{'  ' + s.detail if s.detail else ''}" for s in self.steps]
        lines.append(f"  errors by SQLSTATE: {self.errors_by_sqlstate or 'none'}")
        lines.append(f"  longest stall: {self.longest_stall_s:.2f}s ({self.longest_stall_phase})")
        lines.append(f"  invariants: {asdict(self.invariants)}")
        lines.append(f"  final revision: {self.final_revision}")
        lines.append("verdict: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)))
        return "\n".join(lines)


# ---------------------------------------------------------------- the checks


def live_allocations(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM public.allocations WHERE NOT shadow").fetchone()[0]


def check_invariants(conn: psycopg.Connection[Any], confirmed: Sequence[tuple[str, str]], run_tag: str,
                     allocations_before: int) -> Invariants:
    """Check the database against what the clients saw (``confirmed``: (booking, key) that succeeded)."""
    bookings = [b for b, _ in confirmed]
    keys = [k for _, k in confirmed]
    missing = conn.execute(
        "SELECT count(*) FROM unnest(%s::uuid[], %s::text[]) AS c(booking_id, idempotency_key) "
        "WHERE NOT EXISTS (SELECT 1 FROM public.booking_confirmation_results r "
        "                  WHERE r.booking_id = c.booking_id AND r.idempotency_key = c.idempotency_key)",
        (bookings, keys),
    ).fetchone()[0]
    ours = conn.execute("SELECT count(*) FROM public.booking_confirmation_results WHERE starts_with(idempotency_key, %s)",
                        (f"soak-{run_tag}-",)).fetchone()[0]
    without_allocation = conn.execute(
        "SELECT count(*) FROM public.bookings b WHERE b.status = 'confirmed' AND NOT EXISTS "
        "(SELECT 1 FROM public.allocations a WHERE a.booking_id = b.id AND NOT a.shadow)"
    ).fetchone()[0]
    delta = live_allocations(conn) - allocations_before - len(confirmed)
    return Invariants(
        overlapping_pairs=len(guards.find_violations(conn, guards.NEW_GUARD, limit=OVERLAP_SCAN_LIMIT)),
        missing_evidence=missing,
        phantom_evidence=max(0, ours - (len(confirmed) - missing)),
        confirmed_without_allocation=without_allocation,
        allocations_lost=max(0, -delta),
        allocations_extra=max(0, delta),
    )


def phase_stats(name: str, t0: float, t1: float, calls: Sequence[tuple[float, float, str]]) -> PhaseStats:
    """Calls that completed in [t0, t1), by outcome."""
    outcomes = Counter(outcome for _, end, outcome in calls if t0 <= end < t1)
    seconds = max(t1 - t0, 1e-9)
    return PhaseStats(name, round(seconds, 3), outcomes["ok"], outcomes["rejected"], outcomes["retryable"],
                      outcomes["unexpected"], round(outcomes["ok"] / seconds, 1))


def longest_stall(logs: Sequence[WorkerLog], t_start: float, timeline: Sequence[tuple[str, float, float]]
                  ) -> tuple[float, str]:
    """The longest time any worker went without completing a call, and the phase in which it ended."""
    best, where = 0.0, ""
    for log in logs:
        previous = t_start
        for _, end, _ in sorted(log.calls, key=lambda c: c[1]):
            if end - previous > best:
                best = end - previous
                where = next((name for name, t0, t1 in timeline if t0 <= end < t1), "after the last phase")
                where = f"worker {log.index}, ended during '{where}'"
            previous = end
    return round(best, 3), where


# ---------------------------------------------------------------- the chain


def phase(name: str, seconds: float, ends: list[tuple[str, float]]) -> None:
    """A quiet phase: the workers run, nothing else happens."""
    time.sleep(seconds)
    ends.append((name, time.monotonic()))


def tile(ends: Sequence[tuple[str, float]], start: float) -> list[tuple[str, float, float]]:
    """Phases from their end times: each starts where the previous ended, so every call lands in one."""
    starts = [start, *(end for _, end in ends[:-1])]
    return [(name, t0, t1) for (name, t1), t0 in zip(ends, starts, strict=True)]


def collect(stop: Any, results: Any, processes: Sequence[Any], timeout_s: float = 120) -> list[WorkerLog]:
    """Stop the workers and gather their logs (each puts exactly one, even when it failed).

    A worker checks ``stop`` before each call, so at most its one call in flight ends after this.
    """
    stop.set()
    logs: list[WorkerLog] = []
    for _ in processes:
        try:
            logs.append(results.get(timeout=timeout_s))
        except queue.Empty:
            break
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
    return sorted(logs, key=lambda log: log.index)


def run_step(url: URL, name: str, argv: Sequence[str], alembic_x: Sequence[str], timeout_s: float) -> StepRun:
    """Run ``alembic <argv>`` as an operator would, watching the ACCESS EXCLUSIVE hold on allocations."""
    args = [*[a for x in alembic_x for a in ("-x", x)], *argv]
    started = time.monotonic()
    with LockWatch(url, interval_s=0.01) as watch:
        try:
            proc = alembic_runner.run_cli(url, *args, timeout=timeout_s)
            returncode, output = proc.returncode, db.scrub(proc.stdout + proc.stderr, url)
        except subprocess.TimeoutExpired:
            returncode, output = -1, f"timed out after {timeout_s}s"
    lines = [line for line in output.splitlines() if line.strip()]
    return StepRun(
        name=name, ok=returncode == 0, seconds=round(time.monotonic() - started, 3),
        lock_hold_s=round(watch.longest_s, 3), lock_retries=sum("not granted within" in line for line in lines),
        detail="" if returncode == 0 else (lines[-1] if lines else f"exit {returncode}")[:300],
    )


def prepare(url: URL, rows: int) -> int:
    """Bring an empty database to the revision below head and load ``rows`` generated allocations."""
    alembic_runner.upgrade(url, BEFORE_HEAD)
    with db.connect(url, autocommit=True) as conn:
        return dataset.generate(conn, dataset.Shape.for_rows(rows))["allocations"]


def run_soak(url: URL, *, workers: int = 4, phase_seconds: float = 10.0, overlap_every: int = 10,
             max_calls_per_worker: int = 1_000_000, alembic_x: Sequence[str] = (),
             worker_statement_timeout: str = "60s", step_timeout_s: float = 1800) -> SoakResult:
    """Run the chain under live confirmations on ``url`` (at ``BEFORE_HEAD``, with data: see ``prepare``).

    Phases: 'before', then for each step 'during <step>' (as long as the step
    runs) and 'after <step>' (``phase_seconds`` each). Stops at the first step
    that fails; the checks run regardless.
    """
    if workers < 1 or phase_seconds <= 0:
        raise ValueError("workers must be >= 1 and phase_seconds > 0")
    with db.connect(url, autocommit=True) as conn:
        revision = revisions.current_revision(conn)
        if revision != BEFORE_HEAD:
            raise SoakSetupError(f"the soak starts at {BEFORE_HEAD}; this database is at {revision}")
        tables = [(str(r), str(z), str(t)) for r, z, t in conn.execute(
            "SELECT restaurant_id, zone_id, id FROM public.table_inventory "
            "WHERE active AND zone_id IS NOT NULL ORDER BY id")]
        if not tables:
            raise SoakSetupError("no tables to book: load data first (tools.soak.prepare)")
        day0 = conn.execute("SELECT date_trunc('day', now())").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]
        allocations_before = live_allocations(conn)

    run_tag = secrets.token_hex(4)
    budget = 4 * phase_seconds + len(CHAIN) * step_timeout_s + 60
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Barrier(workers + 1), ctx.Event(), ctx.Queue()
    plans = [WorkerPlan(i, workers, tables, day0, overlap_every, max_calls_per_worker, time.monotonic() + budget,
                        worker_statement_timeout, run_tag, db.libpq_url(url)) for i in range(workers)]
    processes = [ctx.Process(target=worker_main, args=(plan, start, stop, results), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    ends: list[tuple[str, float]] = []  # each phase's name and the moment it ended
    steps: list[StepRun] = []
    started = False
    try:
        start.wait(timeout=120)
        started = True
        t_start = time.monotonic()
        phase("before", phase_seconds, ends)
        for name, argv in CHAIN:
            steps.append(run_step(url, name, argv, alembic_x, step_timeout_s))
            ends.append((f"during {name}", time.monotonic()))
            if not steps[-1].ok:
                break
            phase(f"after {name}", phase_seconds, ends)
        stop.set()  # the last phase ends here: after this, each worker finishes at most the call in flight
        t_end = time.monotonic()
        ends[-1] = (ends[-1][0], t_end)
    except threading.BrokenBarrierError:
        pass  # a worker could not connect: reported below, from its log
    finally:
        logs = collect(stop, results, processes)
    if not started:
        raise SoakSetupError("the workers could not start: " + "; ".join(str(log.fatal) for log in logs if log.fatal))

    calls = [call for log in logs for call in log.calls]
    confirmed = [c for log in logs for c in log.confirmed]
    errors: Counter[str] = Counter()
    for log in logs:
        errors.update(log.errors)
    with db.connect(url, autocommit=True) as conn:
        invariants = check_invariants(conn, confirmed, run_tag, allocations_before)
        final_revision = revisions.current_revision(conn)
        drift = expectations.summarize(expectations.drift(conn, revisions.head()))

    # Workers leave the start barrier with this process and may finish a call before it reads the clock.
    timeline = tile(ends, min([t_start, *(start for start, _, _ in calls)]))
    phases = [phase_stats(name, t0, t1, calls) for name, t0, t1 in timeline]
    stall, stall_where = longest_stall(logs, t_start, timeline)
    unexpected = [f"worker {log.index}: {text}" for log in logs for text in log.unexpected]
    problems = invariants.problems()
    problems += [f"worker {log.index} died: {log.fatal}" for log in logs if log.fatal]
    if len(logs) < workers:
        problems.append(f"only {len(logs)} of {workers} workers reported")
    unexpected_count = sum(1 for *_, outcome in calls if outcome == "unexpected")
    if unexpected_count:
        problems.append(f"{unexpected_count} unexpected worker error(s), e.g. {unexpected[:3]}")
    accepted = [b for log in logs for b in log.overlap_accepted]
    if accepted:
        problems.append(f"{len(accepted)} overlapping confirmation(s) accepted, e.g. bookings {accepted[:3]}")
    problems += [f"step '{s.name}' failed: {s.detail}" for s in steps if not s.ok]
    if len(steps) < len(CHAIN):
        problems.append(f"only {len(steps)} of {len(CHAIN)} steps ran")
    if final_revision != revisions.head():
        problems.append(f"the database ended at {final_revision}, not head")
    if drift:
        problems.append(f"catalog differs from head's expectation: {drift[:5]}")
    return SoakResult(
        workers=workers, rows=rows, phase_seconds=phase_seconds, duration_s=round(t_end - t_start, 3),
        attempts=len(calls), confirmations=len(confirmed),
        rejected_overlaps=sum(1 for *_, outcome in calls if outcome == "rejected"),
        phases=phases, steps=steps, errors_by_sqlstate=dict(sorted(errors.items())), unexpected_errors=unexpected[:20],
        longest_stall_s=stall, longest_stall_phase=stall_where, invariants=invariants,
        final_revision=final_revision, catalog_drift=drift, problems=problems,
    )


# ---------------------------------------------------------------- the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak",
        description="Run upgrade head / downgrade -1 / upgrade head under live confirmations and check the invariants. "
                    "Uses a new scratch database on the (loopback) server of DATABASE_URL, else a throw-away server.")
    parser.add_argument("--workers", type=int, default=4, help="confirming worker processes (default 4)")
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="length of each quiet phase (default 10)")
    parser.add_argument("--rows", type=int, default=100_000, help="generated allocation rows (default 100000)")
    parser.add_argument("--overlap-every", type=int, default=10, help="one hold in N overlaps on purpose (default 10)")
    parser.add_argument("--max-calls", type=int, default=1_000_000, help="upper bound of calls per worker")
    parser.add_argument("-x", dest="alembic_x", action="append", default=[], metavar="NAME=VALUE",
                        help="alembic -x option for every step, e.g. -x swap_lock_timeout=2s (repeatable)")
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    try:
        url = db.sqlalchemy_url() if os.environ.get(db.ENV_VAR) else None
        with scratch_database(url, "reserve_soak", local_only=True) as target:
            print(f"preparing {args.rows} rows at {BEFORE_HEAD} …", file=sys.stderr)
            prepare(target, args.rows)
            result = run_soak(target, workers=args.workers, phase_seconds=args.phase_seconds,
                              overlap_every=args.overlap_every, max_calls_per_worker=args.max_calls,
                              alembic_x=args.alembic_x)
    except (SoakSetupError, ServerError, db.DatabaseUrlError, db.ConnectionFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.render())
    if args.out:
        args.out.write_text(result.to_json() + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
