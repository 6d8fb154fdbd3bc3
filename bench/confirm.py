"""Confirm throughput: ``confirm_hold_assignment_tx`` v11 against v12 under pgbench, at head.

Holds are prepared in advance (bench.queue), so each pgbench transaction is
one confirm and nothing else; the two versions are installed alternately in
interleaved rounds at every client count, so that the machine's drift falls
on both. Percentiles are ``reserve.stats.quantile``, the project's one
definition.
"""

from __future__ import annotations

import glob
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from bench.instruments import Progress, checkpoint, connect
from bench.options import Options
from reserve import sql
from reserve.rollout.ephemeral import EphemeralPostgres, find_bindir
from reserve.stats import quantile

WARM_UP = 300  # confirms of the single-client v12 run that calibrates the length of every run
VERSIONS = ("v11", "v12")

CONFIRM_SCRIPT = """\\set i :i + 1
\\set n :first + :client_id * :per_client + :i
SELECT count(*) FROM bench.queue q
  CROSS JOIN LATERAL public.confirm_hold_assignment_tx(
    q.hold_id, q.booking_id, q.idempotency_key,
    p_expected_policy_version => 'bench-1', p_target_status => 'confirmed') AS c
WHERE q.n = :n;
"""

PREPARE_HOLDS = [
    """CREATE TEMP TABLE bench_picks ON COMMIT DROP AS
       SELECT %(first)s::bigint + row_number() OVER () AS n, table_id, restaurant_id, zone_id, slot,
              gen_random_uuid() AS booking_id, gen_random_uuid() AS hold_id
       FROM (SELECT t.id AS table_id, t.restaurant_id, t.zone_id,
                    tstzrange(date_trunc('day', now()) + make_interval(days => d, hours => 11),
                              date_trunc('day', now()) + make_interval(days => d, hours => 13), '[)') AS slot
             FROM public.table_inventory t, generate_series(%(day_from)s::int, %(day_to)s::int) AS d
             WHERE t.active AND t.zone_id IS NOT NULL
             ORDER BY random() LIMIT %(count)s) picked""",
    """INSERT INTO public.bookings (id, restaurant_id, status, party_size, start_at, end_at)
       SELECT booking_id, restaurant_id, 'pending', 2, lower(slot), upper(slot) FROM bench_picks""",
    """INSERT INTO public.table_holds (id, restaurant_id, zone_id, booking_id, start_at, end_at, expires_at, metadata)
       SELECT hold_id, restaurant_id, zone_id, booking_id, lower(slot), upper(slot), now() + interval '1 day',
              jsonb_build_object('policyVersion', 'bench-1', 'selection',
                jsonb_build_object('snapshot', jsonb_build_object('adjacency', jsonb_build_object('hash', md5(table_id::text)))))
       FROM bench_picks""",
    "INSERT INTO public.table_hold_members (hold_id, table_id) SELECT hold_id, table_id FROM bench_picks",
    """INSERT INTO bench.queue (n, hold_id, booking_id, idempotency_key)
       SELECT n, hold_id, booking_id, 'bench-' || n FROM bench_picks""",
]


@dataclass
class HoldPool:
    """Holds prepared in advance, numbered 1..n in bench.queue; each pgbench run consumes a slice."""

    url: URL
    next_n: int = 1
    next_day: int = 1
    tables: int = 0

    def setup(self) -> None:
        with connect(self.url) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
            conn.execute("CREATE TABLE IF NOT EXISTS bench.queue (n bigint PRIMARY KEY, hold_id uuid NOT NULL, "
                         "booking_id uuid NOT NULL, idempotency_key text NOT NULL)")
            self.tables = conn.execute(
                "SELECT count(*) FROM public.table_inventory WHERE active AND zone_id IS NOT NULL").fetchone()[0]
            # A pool set up again in the same database (the online swap's rounds, then these) goes on after
            # the holds and days an earlier one used.
            self.next_n, self.next_day = conn.execute(
                "SELECT coalesce(max(q.n), 0) + 1, coalesce(max(b.start_at::date - current_date), 0) + 1 "
                "FROM bench.queue q LEFT JOIN public.bookings b ON b.id = q.booking_id").fetchone()

    def add(self, count: int) -> tuple[int, int]:
        """Prepare ``count`` more single-table holds on distinct (table, day) slots; returns their n range."""
        days = math.ceil(count / self.tables) + 1
        first = self.next_n
        with connect(self.url) as conn, conn.transaction():
            params = {"first": first - 1, "day_from": self.next_day, "day_to": self.next_day + days - 1, "count": count}
            for statement in PREPARE_HOLDS:
                conn.execute(statement, params)
        with connect(self.url) as conn:
            conn.execute("VACUUM (ANALYZE) public.table_holds, public.table_hold_members, public.bookings, bench.queue")
        self.next_n += count
        self.next_day += days
        return first, first + count - 1

    def left(self, first: int, last: int) -> int:
        with connect(self.url) as conn:
            return conn.execute("SELECT count(*) FROM bench.queue q JOIN public.table_holds h ON h.id = q.hold_id "
                                "WHERE q.n BETWEEN %s AND %s", (first, last)).fetchone()[0]


def install_confirm(url: URL, version: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.function_sql("confirm_hold_assignment_tx", version))


def pgbench_binary() -> str:
    for candidate in (find_bindir() / "pgbench", shutil.which("pgbench")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("pgbench not found: install postgresql-client-15")


@dataclass
class PgbenchRun:
    transactions: int
    tps: float
    latencies_ms: list[float]


@dataclass(frozen=True)
class Pgbench:
    """Where pgbench runs: the server, the database, and a scratch directory for its script and logs."""

    server: EphemeralPostgres
    dbname: str
    workdir: Path

    @property
    def url(self) -> URL:
        return self.server.url(self.dbname)

    def run(self, clients: int, per_client: int, first: int) -> PgbenchRun:
        return run_pgbench(self.server, self.dbname, clients, per_client, first, self.workdir)


def run_pgbench(server: EphemeralPostgres, dbname: str, clients: int, per_client: int, first: int,
                workdir: Path) -> PgbenchRun:
    """``clients`` x ``per_client`` confirms of the holds numbered from ``first``; every latency kept."""
    script = workdir / "confirm.sql"
    script.write_text(CONFIRM_SCRIPT)
    prefix = workdir / f"log_{time.monotonic_ns()}"
    cmd = [pgbench_binary(), "-n", "-M", "prepared", "-h", str(server.workdir / "socket"), "-p", str(server.port),
           "-U", server.user, "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
           "-t", str(per_client), "-D", "i=0", "-D", f"first={first - 1}", "-D", f"per_client={per_client}",
           "-f", str(script), "-l", f"--log-prefix={prefix}", dbname]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or "number of failed transactions: 0 " not in done.stdout:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-2000:]} {done.stdout[-500:]}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout).group(1))
    return PgbenchRun(clients * per_client, tps, read_latencies(prefix))


def read_latencies(prefix: Path) -> list[float]:
    """Milliseconds per transaction from pgbench's per-transaction logs (deleted once read)."""
    latencies = []
    for path in glob.glob(f"{prefix}*"):
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)
        os.unlink(path)
    return latencies


def confirm_benchmark(server: EphemeralPostgres, dbname: str, options: Options, progress: Progress) -> dict[str, Any]:
    """v11 against v12 at head (the same guard for both), in interleaved rounds, holds prepared in advance."""
    pool = HoldPool(server.url(dbname))
    pool.setup()
    bench = Pgbench(server, dbname, Path(tempfile.mkdtemp(prefix="reserve-bench-")))
    try:
        per_client = calibrate(bench, pool, options, progress)
        versions = {version: (lambda v=version: install_confirm(bench.url, v)) for version in VERSIONS}
        runs = rounds(bench, pool, per_client, options.confirm_clients, options.confirm_rounds, versions, progress)
        install_confirm(bench.url, "v12")  # leave head as it ships
        with connect(bench.url) as conn:
            evidence = conn.execute("SELECT count(*) FROM public.booking_confirmation_results").fetchone()[0]
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    out = summarize_runs(runs, "v11", "v12", options.confirm_clients)
    out["method"] = (f"pgbench -M prepared, one confirm per transaction (single-table holds with an idempotency key, "
                     f"booking pending -> confirmed), {options.confirm_rounds} interleaved rounds per version and "
                     f"client count, both versions at head; per-client transactions {per_client}")
    out["evidence_rows"] = evidence
    return out


def calibrate(bench: Pgbench, pool: HoldPool, options: Options, progress: Progress) -> dict[int, int]:
    """Transactions per client at each client count, so that one run lasts about ``confirm_seconds``."""
    warm_first, _ = pool.add(WARM_UP)
    install_confirm(bench.url, "v12")
    warm = bench.run(1, WARM_UP, warm_first)
    per_client = {c: max(50, int(options.confirm_seconds * warm.tps / c)) for c in options.confirm_clients}
    progress(f"confirm: single-client v12 warm-up {warm.tps:.0f} tps")
    return per_client


def rounds(bench: Pgbench, pool: HoldPool, per_client: dict[int, int], clients: tuple[int, ...], count: int,
           variants: dict[str, Callable[[], None]], progress: Progress) -> dict[tuple[str, int], list[PgbenchRun]]:
    """Every run, by (variant, clients): each variant is put in place by its callable before its run, and the
    variants alternate first from one round to the next, so that the machine's drift falls on all of them."""
    names = list(variants)
    cursor, _ = pool.add(count * len(names) * sum(c * per_client[c] for c in clients))
    runs: dict[tuple[str, int], list[PgbenchRun]] = {}
    for c in clients:
        for round_no in range(count):
            for name in names if round_no % 2 == 0 else names[::-1]:
                variants[name]()
                run = confirm_run(bench, pool, c, per_client[c], cursor)
                cursor += run.transactions
                runs.setdefault((name, c), []).append(run)
                progress(f"  {name} c={c} round {round_no + 1}: {run.tps:7.1f} tps, "
                         f"p95 {quantile(run.latencies_ms, 0.95):6.2f} ms")
    return runs


def confirm_run(bench: Pgbench, pool: HoldPool, clients: int, per_client: int, first: int) -> PgbenchRun:
    """One pgbench run; every hold it was given must be confirmed (and so gone)."""
    checkpoint(bench.url)
    run = bench.run(clients, per_client, first)
    left = pool.left(first, first + clients * per_client - 1)
    if left:
        raise RuntimeError(f"{left} holds of a run were not confirmed")
    return run


def summarize_runs(runs: dict[tuple[str, int], list[PgbenchRun]], baseline: str, candidate: str,
                   clients: tuple[int, ...]) -> dict[str, Any]:
    """Per variant and client count: tps, p50 and p95 (over every transaction of every round), transactions;
    and ``candidate`` over ``baseline`` for p95 and tps."""
    out: dict[str, Any] = {v: {"tps": {}, "p95_ms": {}, "p50_ms": {}, "transactions": {}} for v in (baseline, candidate)}
    for (variant, c), measured in runs.items():
        latencies = [x for run in measured for x in run.latencies_ms]
        seconds = sum(run.transactions / run.tps for run in measured)
        txns = sum(run.transactions for run in measured)
        out[variant]["tps"][str(c)] = round(txns / seconds, 1)
        out[variant]["p95_ms"][str(c)] = round(quantile(latencies, 0.95), 3)
        out[variant]["p50_ms"][str(c)] = round(quantile(latencies, 0.50), 3)
        out[variant]["transactions"][str(c)] = txns
    for figure, key in (("p95_ratio", "p95_ms"), ("tps_ratio", "tps")):
        out[figure] = {str(c): round(out[candidate][key][str(c)] / out[baseline][key][str(c)], 3) for c in clients}
    return out
