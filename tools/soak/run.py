"""Running the soak: prepare the database, start the workers, run the chain, collect, judge.

Why a module of its own: this is the only part that orchestrates processes
(the ``spawn``-ed workers, the Alembic subprocesses, the lock watch); what
the workers do, what is checked and how the figures are cut and shown live
in the modules it imports (``workers``, ``checks``, ``timeline``, ``result``).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import secrets
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg import sql
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import UsageError
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.evidence import Step
from reserve.rollout.lockwatch import LockWatch
from reserve.schema import events, expectations, revisions
from reserve.schema.swap import state as swap_state
from tools.soak.checks import check_invariants, live_allocations
from tools.soak.result import SoakResult
from tools.soak.timeline import longest_stall, phase, phase_stats, tile
from tools.soak.workers import WorkerLog, WorkerPlan, worker_main

BEFORE_HEAD = revisions.chain()[-2]
CHAIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("upgrade head", ("upgrade", "head")),
    ("downgrade -1", ("downgrade", "-1")),
    ("upgrade head again", ("upgrade", "head")),
)


class SoakSetupError(UsageError):
    """The soak could not start (wrong revision, no data, not a loopback server): exit 2."""


def prepare(url: URL, rows: int) -> int:
    """Bring an empty database to the revision below head and load ``rows`` generated allocations."""
    alembic_runner.upgrade(url, BEFORE_HEAD)
    with db.connect(url, autocommit=True) as conn:
        return dataset.generate(conn, dataset.Shape.for_rows(rows))["allocations"]


DEPLOYER = "reserve_soak_deployer"


def harden(url: URL) -> URL:
    """The settings production databases have that the swap must hold under (issue 30), made on ``url`` after
    ``prepare``: every session's default isolation REPEATABLE READ (workers and alembic alike), FORCE ROW
    LEVEL SECURITY on allocations, and the schema owned by a deploy role that is not a superuser (BYPASSRLS:
    without it the online method refuses, naming the role). The URL alembic runs with, as that role."""
    password = secrets.token_urlsafe(18)
    with db.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {DEPLOYER}")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER BYPASSRLS PASSWORD {}").format(
            sql.Identifier(DEPLOYER), sql.Literal(password)))
        conn.execute(f"GRANT CREATE ON DATABASE {url.database} TO {DEPLOYER}")
        conn.execute(f"ALTER SCHEMA public OWNER TO {DEPLOYER}")
        conn.execute(f"""DO $$ DECLARE o record; BEGIN
          FOR o IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
                   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'S')
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype IN ('a', 'i')) LOOP
            EXECUTE format('ALTER %s %s OWNER TO {DEPLOYER}',
                           CASE o.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN
                           'MATERIALIZED VIEW' ELSE 'TABLE' END, o.name);
          END LOOP;
          FOR o IN SELECT p.oid::regprocedure AS name FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
            EXECUTE format('ALTER ROUTINE %s OWNER TO {DEPLOYER}', o.name);
          END LOOP;
          FOR o IN SELECT t.oid::regtype AS name FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace
                   AND t.typtype = 'e' LOOP
            EXECUTE format('ALTER TYPE %s OWNER TO {DEPLOYER}', o.name);
          END LOOP; END $$""")
        conn.execute("ALTER TABLE public.allocations FORCE ROW LEVEL SECURITY")
        conn.execute(f"ALTER DATABASE {url.database} SET default_transaction_isolation = 'repeatable read'")
    return url.set(username=DEPLOYER, password=password)


def run_step(url: URL, name: str, argv: Sequence[str], alembic_x: Sequence[str], timeout_s: float) -> Step:
    """Run ``alembic <argv>`` as an operator would, watching the ACCESS EXCLUSIVE hold on allocations.

    ``lock_hold_s``: the longest ACCESS EXCLUSIVE hold on allocations seen from pg_locks;
    ``lock_retries``: the swap's lock attempts that timed out and were retried.
    """
    args = [*[a for x in alembic_x for a in ("-x", x)], *argv]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reserve-soak-") as scratch:
        events_file = Path(scratch) / "events.jsonl"
        with LockWatch(url, interval_s=0.01) as watch:
            try:
                proc = alembic_runner.run_cli(url, *args, timeout=timeout_s,
                                              extra_env={events.EVENTS_ENV: str(events_file)})
                returncode, output = proc.returncode, db.scrub(proc.stdout + proc.stderr, url)
            except subprocess.TimeoutExpired:
                returncode, output = -1, f"timed out after {timeout_s}s"
        reported = events.read(events_file)
    lines = [line for line in output.splitlines() if line.strip()]
    # The online swap's own holds (a poll can miss milliseconds), and the lock attempts it retried.
    held = [e["seconds"] for e in reported if e["event"] == events.HOLD and swap_state.LIVE in e["tables"]]
    return Step(
        name=name, ok=returncode == 0, seconds=round(time.monotonic() - started, 3),
        detail="" if returncode == 0 else (lines[-1] if lines else f"exit {returncode}")[:300],
        lock_hold_s=round(max([watch.longest_s, *held]), 4),
        lock_retries=sum(e["event"] == events.LOCK_RETRY for e in reported),
    )



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


def run_soak(url: URL, *, workers: int = 4, phase_seconds: float = 10.0, overlap_every: int = 10,
             max_calls_per_worker: int = 1_000_000, alembic_x: Sequence[str] = (),
             worker_statement_timeout: str = "60s", step_timeout_s: float = 1800,
             migrate_url: URL | None = None) -> SoakResult:
    """Run the chain under live confirmations on ``url`` (at ``BEFORE_HEAD``, with data: see ``prepare``).

    Phases: 'before', then for each step 'during <step>' (as long as the step
    runs) and 'after <step>' (``phase_seconds`` each). Stops at the first step
    that fails; the checks run regardless. ``migrate_url``: the role alembic runs as (harden's deploy role),
    if not ``url``'s.
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
            raise SoakSetupError("no tables to book: load data first (tools.soak.run.prepare)")
        day0 = conn.execute("SELECT date_trunc('day', now())").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]
        allocations_before = live_allocations(conn)

    run_tag = secrets.token_hex(4)
    budget = 4 * phase_seconds + len(CHAIN) * step_timeout_s + 60
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Barrier(workers + 1), ctx.Event(), ctx.Queue()
    plans = [WorkerPlan(i, workers, tables, day0, overlap_every, max_calls_per_worker, time.monotonic() + budget,
                        worker_statement_timeout, run_tag, WorkerPlan.render_url(url)) for i in range(workers)]
    processes = [ctx.Process(target=worker_main, args=(plan, start, stop, results), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    ends: list[tuple[str, float]] = []  # each phase's name and the moment it ended
    steps: list[Step] = []
    started = False
    try:
        start.wait(timeout=120)
        started = True
        t_start = time.monotonic()
        phase("before", phase_seconds, ends)
        for name, argv in CHAIN:
            steps.append(run_step(migrate_url or url, name, argv, alembic_x, step_timeout_s))
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
        forced = conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'public.allocations'::regclass"
                              ).fetchone()[0]
        # Hardened: FORCE ROW LEVEL SECURITY is the one difference from head's catalog, and it must still be there.
        drift = [reason for reason in expectations.reasons(expectations.drift(conn, revisions.head()))
                 if not (migrate_url is not None and forced and "allocations kind=r" in reason and "force_rls" in reason)]
        if migrate_url is not None and not forced:
            drift.append("FORCE ROW LEVEL SECURITY on public.allocations was lost")

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
