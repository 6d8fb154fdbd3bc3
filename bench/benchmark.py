"""Benchmarks at scale (issue 6): the swap's lock hold, the overlap probes, confirm throughput.

Everything is measured side by side in one run on one throw-away server
(``EphemeralPostgres(fsync=True)``), so that what matters is a ratio, not an
absolute number on a noisy shared machine:

- **swap**: the ACCESS EXCLUSIVE hold of the real ``alembic upgrade head``
  (from 0003) and ``alembic downgrade -1``, seen from the database (a monitor
  connection polls pg_locks every 10 ms, ``reserve.rollout.lockwatch``), against the floors: a bare
  ``ALTER TABLE … ADD CONSTRAINT`` of the shipped guard, of the old guard and
  of the seed's key order, and a plain ``CREATE INDEX`` with the shipped key.
  Each is measured ``repeats`` times, interleaved; the headline is the
  minimum (the least disturbed by other work on the machine), every sample is
  kept. The lock holder's CPU time is recorded too: it does not depend on
  what else the machine is doing.
- **probe**: the checklist's overlap probes (``reserve.schema.probes``) at 0003
  (old guard) and at head, p50/p95 of wall time from the client.
- **confirm**: ``confirm_hold_assignment_tx`` v11 against v12 under pgbench
  at 1, 4 and 8 clients, holds prepared in advance, both at head (the same
  guard), in interleaved rounds.
- **predictor**: ``reserve.rollout.predictor`` against the measured hold.
- **explore**: other key orders and every session- or definition-level knob
  that could shorten the hold, each built bare on the same data.
- **scaling**: the swap at smaller sizes, for the plot of hold against rows.

The key order measured as "shipped" is always ``guards.NEW_GUARD.key``: the
benchmark follows whatever the revision ships.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db, sql
from reserve.rollout import alembic_runner, dataset, predictor
from reserve.rollout.ephemeral import EphemeralPostgres, find_bindir
from reserve.rollout.lockwatch import LockWatch, proc_cpu_s
from reserve.schema import guards, probes

log = logging.getLogger("bench.benchmark")

FROM_REVISION = "0003_confirm_v12"
SEED_KEY = ("restaurant_id", "resource_type", "resource_id", "window")
# Key orders tried besides the shipped one and the seed's.
KEY_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("restaurant_id", "window", "resource_id", "resource_type"),
    ("restaurant_id", "window", "resource_type", "resource_id"),
    ("restaurant_id", "resource_id", "window", "resource_type"),
    ("restaurant_id", "resource_id", "resource_type", "window"),
    ("resource_id", "window", "restaurant_id", "resource_type"),
    ("resource_id", "restaurant_id", "resource_type", "window"),
    ("window", "restaurant_id", "resource_id", "resource_type"),
)
CLIENTS = (1, 4, 8)
POLL_S = 0.010


@dataclass
class Options:
    rows: int = 1_000_000
    scaling: tuple[int, ...] = ()
    repeats: int = 3
    probe_runs: int = 200
    probe_budget_s: float = 4.0
    explore: bool = True
    key_candidates: tuple[tuple[str, ...], ...] = KEY_CANDIDATES
    confirm: bool = True
    confirm_clients: tuple[int, ...] = CLIENTS
    confirm_rounds: int = 5
    confirm_seconds: float = 4.0
    server_settings: dict[str, str] = field(default_factory=dict)
    # A key order to measure as if guards.NEW_GUARD shipped it (None: what guards.py ships).
    proposed_key: tuple[str, ...] | None = None


Progress = Callable[[str], None]


# ---------------------------------------------------------------- measuring instruments

def connect(url: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(db.libpq_url(url), autocommit=True, application_name="bench")


def checkpoint(url: URL) -> None:
    """Start every timed build from the same state: no dirty buffers, a fresh WAL segment budget."""
    with connect(url) as conn:
        conn.execute("CHECKPOINT")


@dataclass
class Sample:
    """One timed operation: wall time, the DB-side ACCESS EXCLUSIVE hold, and the holder's CPU."""

    wall_s: float
    lock_s: float
    cpu_s: float | None
    holds: int

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": r3(self.wall_s), "lock_s": r3(self.lock_s),
                "cpu_s": None if self.cpu_s is None else r3(self.cpu_s), "holds": self.holds}


def r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def timed_migration(url: URL, action: Callable[[], None]) -> Sample:
    checkpoint(url)
    with LockWatch(url, interval_s=POLL_S) as monitor:
        started = time.perf_counter()
        action()
        wall = time.perf_counter() - started
    return Sample(wall, monitor.total_s, monitor.cpu_s, len(monitor.holds))


def timed_statements(url: URL, statements: Sequence[str], settings: Sequence[str] = ()) -> Sample:
    """Run ``statements`` in one transaction (after ``SET LOCAL`` of ``settings``), timed from both sides."""
    checkpoint(url)
    with connect(url) as conn, LockWatch(url, interval_s=POLL_S) as monitor:
        pid = conn.info.backend_pid
        cpu0 = proc_cpu_s(pid)
        started = time.perf_counter()
        with conn.transaction():
            for setting in settings:
                conn.execute(f"SET LOCAL {setting}")
            for statement in statements:
                conn.execute(statement)
        wall = time.perf_counter() - started
        cpu1 = proc_cpu_s(pid)
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Sample(wall, monitor.total_s, cpu, len(monitor.holds))


# ---------------------------------------------------------------- what gets built

def key_label(key: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' if c == "window" else c for c in key)


def constraint_sql(name: str, key: Sequence[str], *, timing: str = "DEFERRABLE INITIALLY IMMEDIATE",
                   with_params: str = "", table: str = guards.TABLE) -> str:
    """A bare ADD CONSTRAINT of an exclusion guard with ``key`` (same operators and predicate as the guards)."""
    definition = guards.Guard(name, tuple(key), timing).definition
    if with_params:
        definition = definition.replace(") WHERE", f") WITH ({with_params}) WHERE", 1)
    return f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"


def index_sql(name: str, key: Sequence[str], table: str = guards.TABLE) -> str:
    """A plain partial GiST index on ``key``: the guard's index without the exclusion check."""
    return f"CREATE INDEX {name} ON {table} USING gist ({key_label(key)}) WHERE (NOT shadow)"


@dataclass(frozen=True)
class Build:
    name: str
    statements: tuple[str, ...]
    drop: str
    key: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    index: str = ""
    note: str = ""


def constraint_build(name: str, key: Sequence[str], *, settings: Sequence[str] = (), with_params: str = "",
                     note: str = "") -> Build:
    cname = f"bench_{name}"
    return Build(name, (constraint_sql(cname, key, with_params=with_params),),
                 f"ALTER TABLE {guards.TABLE} DROP CONSTRAINT {cname}", tuple(key), tuple(settings), cname, note)


def index_build(name: str, key: Sequence[str]) -> Build:
    iname = f"bench_{name}"
    return Build(name, (index_sql(iname, key),), f"DROP INDEX public.{iname}", tuple(key), (), iname)


def shipped_key() -> tuple[str, ...]:
    """The key order under test: always read from ``guards.NEW_GUARD``, so the benchmark follows what ships."""
    return guards.NEW_GUARD.key


@contextmanager
def proposed_key(key: Sequence[str] | None) -> Iterator[None]:
    """Benchmark a proposed key order as if it shipped: ``guards.NEW_GUARD`` (read by the revision at each
    Alembic run, by the predictor and by the floors) is replaced for the duration. ``None``: what ships."""
    if not key:
        yield
        return
    if sorted(key) != sorted(guards.NEW_GUARD.key):
        raise ValueError(f"a key order must use exactly the columns {sorted(guards.NEW_GUARD.key)}")
    shipped = guards.NEW_GUARD
    guards.NEW_GUARD = replace(shipped, key=tuple(key))
    try:
        yield
    finally:
        guards.NEW_GUARD = shipped


def order_name(key: Sequence[str]) -> str:
    short = {"restaurant_id": "restaurant", "resource_type": "type", "resource_id": "resource", "window": "window"}
    return "_".join(short[c] for c in key)


# ---------------------------------------------------------------- probes

def probe_latency(conn: psycopg.Connection[Any], probe: str, params: dict[str, Any], options: Options) -> dict[str, Any]:
    """p50/p95 of ``probe`` (as many runs as fit in the budget, 30 to ``probe_runs``) and the index it used."""
    started = time.perf_counter()
    conn.execute(probe, params, prepare=True).fetchall()
    one = max(time.perf_counter() - started, 1e-5)
    runs = int(max(30, min(options.probe_runs, options.probe_budget_s / one)))
    result = probes.latency_ms(conn, probe, params, runs=runs)
    plan = probes.plan(conn, probe, params)
    result["plan"] = plan_summary(plan)
    return result


def plan_summary(plan: str) -> str:
    """How the probe reached allocations: the index it used, or a sequential scan."""
    for pattern, label in ((r"Index (?:Only )?Scan (?:Backward )?using (\S+)", "index {}"),
                           (r"Bitmap Index Scan on (\S+)", "bitmap {}"), (r"Seq Scan on (\S+)", "seq scan")):
        found = re.search(pattern, plan)
        if found:
            return label.format(found.group(1))
    return plan.splitlines()[0].split("  ")[0].strip()


def measure_probes(url: URL, params: dict[str, Any], options: Options) -> dict[str, Any]:
    with connect(url) as conn:
        return {"restaurant_scoped": probe_latency(conn, probes.RESTAURANT_SCOPED, params, options),
                "point": probe_latency(conn, probes.POINT, params, options)}


# ---------------------------------------------------------------- the dataset

def create_database(server: EphemeralPostgres, name: str) -> URL:
    with psycopg.connect(db.libpq_url(server.url()), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return server.url(name)


def drop_database(server: EphemeralPostgres, name: str) -> None:
    with psycopg.connect(db.libpq_url(server.url()), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def load(url: URL, rows: int, progress: Progress) -> dict[str, Any]:
    """Schema at 0003, the shared synthetic dataset, then VACUUM: the state production is in before the swap."""
    alembic_runner.upgrade(url, FROM_REVISION)
    with connect(url) as conn:
        started = time.perf_counter()
        counts = dataset.generate(conn, dataset.Shape.for_rows(rows))
        generated = time.perf_counter() - started
        progress(f"generated {counts['allocations']:,} allocations in {generated:.0f}s")
        # The first scan after a bulk load sets hint bits (and dirties every page); a long-lived
        # production table has them already. Measured so the cost is known, then removed by VACUUM.
        started = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM {guards.TABLE}")
        first_scan = time.perf_counter() - started
        conn.execute("VACUUM (ANALYZE) public.allocations")
        conn.execute("VACUUM (ANALYZE)")
        started = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM {guards.TABLE}")
        second_scan = time.perf_counter() - started
        live = conn.execute(f"SELECT count(*) FROM {guards.TABLE} WHERE NOT shadow").fetchone()[0]
        size = conn.execute("SELECT pg_table_size('public.allocations')").fetchone()[0]
    return {"counts": counts, "live_allocations": live, "generate_s": r3(generated),
            "table_mb": round(size / 2**20, 1), "first_scan_s": r3(first_scan), "vacuumed_scan_s": r3(second_scan)}


# ---------------------------------------------------------------- the swap and its floors

def drop_guards(url: URL) -> None:
    """From 0003: take the old guard and the redundant index away, leaving allocations bare for the floors."""
    with connect(url) as conn:
        conn.execute(guards.OLD_GUARD.drop_sql())
        conn.execute(f"DROP INDEX public.{guards.REDUNDANT_INDEX}")


def restore_redundant_index(url: URL) -> None:
    with connect(url) as conn:
        conn.execute(guards.REDUNDANT_INDEX_SQL.format(concurrently=""))


def index_mb(url: URL, name: str) -> float | None:
    with connect(url) as conn:
        size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (f"public.{name}",)).fetchone()[0]
    return None if size is None else round(size / 2**20, 1)


def measure_build(url: URL, build: Build, *, keep: bool = False, probe_params: dict[str, Any] | None = None,
                  options: Options | None = None) -> dict[str, Any]:
    sample = timed_statements(url, build.statements, build.settings)
    result: dict[str, Any] = {"name": build.name, **sample.as_dict()}
    if build.key:
        result["key"] = key_label(build.key)
    if build.settings:
        result["settings"] = list(build.settings)
    if build.note:
        result["note"] = build.note
    if build.index:
        result["index_mb"] = index_mb(url, build.index)
    if probe_params is not None and options is not None:
        result["probe"] = measure_probes(url, probe_params, options)
    if not keep:
        with connect(url) as conn:
            conn.execute(build.drop)
    return result


def headline(samples: list[dict[str, Any]], field_name: str = "lock_s") -> float | None:
    values = [s[field_name] for s in samples if s.get(field_name) is not None]
    return min(values) if values else None


def floors(url: URL, rep: int, probe_params: dict[str, Any] | None, options: Options, progress: Progress,
           *, exploring: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """At 0003: drop the old guard, time the bare builds, and end by rebuilding the old guard (timed too).

    With ``exploring``, the other key orders and knobs are built on the bare
    table too, before the old guard comes back.
    """
    drop_guards(url)
    builds = [
        ("floor_new", constraint_build("shipped", shipped_key())),
        ("seed_order", constraint_build("seed", SEED_KEY)),
        ("index_only", index_build("index_only", shipped_key())),
    ]
    if rep % 2 == 1:
        builds.reverse()
    out: dict[str, dict[str, Any]] = {}
    explored = None
    try:
        for label, build in builds:
            with_probe = probe_params is not None and label != "index_only"
            out[label] = measure_build(url, build, probe_params=probe_params if with_probe else None, options=options)
            progress(f"  {label:<11} lock {out[label]['lock_s']:7.2f}s  wall {out[label]['wall_s']:7.2f}s  "
                     f"cpu {out[label]['cpu_s'] or 0:7.2f}s")
        if exploring and probe_params is not None:
            progress("exploring key orders and knobs")
            explored = explore(url, probe_params, options, progress)
    finally:
        old = Build("floor_old", (guards.OLD_GUARD.add_sql(),), guards.OLD_GUARD.drop_sql(), guards.OLD_GUARD.key,
                    index=guards.OLD_GUARD.name)
        out["floor_old"] = measure_build(url, old, keep=True)
        progress(f"  floor_old   lock {out['floor_old']['lock_s']:7.2f}s  wall {out['floor_old']['wall_s']:7.2f}s  "
                 f"cpu {out['floor_old']['cpu_s'] or 0:7.2f}s")
        restore_redundant_index(url)
    return out, explored


def explore(url: URL, probe_params: dict[str, Any], options: Options, progress: Progress) -> dict[str, Any]:
    """Other key orders, and every knob on the shipped key, each built bare on the same (bare) table."""
    shipped = shipped_key()
    results: dict[str, Any] = {"key_orders": [], "knobs": []}
    for key in options.key_candidates:
        if tuple(key) in (shipped, SEED_KEY):
            continue  # measured by the floors, with probes
        build = constraint_build("k_" + order_name(key), key)
        measured = measure_build(url, build, probe_params=probe_params, options=options)
        results["key_orders"].append(measured)
        progress(f"  key ({key_label(key)}): lock {measured['lock_s']:.2f}s cpu {measured['cpu_s'] or 0:.2f}s "
                 f"restaurant p95 {measured['probe']['restaurant_scoped']['p95_ms']:.3f}ms")
    knobs = [
        constraint_build("shipped_again", shipped, note="the shipped build again, as this series' baseline"),
        constraint_build("mwm_1gb", shipped, settings=("maintenance_work_mem = '1GB'",),
                         note="SET LOCAL maintenance_work_mem (default 64MB)"),
        constraint_build("buffering_on", shipped, with_params="buffering = on",
                         note="GiST buffering build forced on (default auto: only beyond effective_cache_size)"),
        constraint_build("fillfactor_100", shipped, with_params="fillfactor = 100",
                         note="GiST pages packed full (default 90)"),
        constraint_build("sync_commit_off", shipped, settings=("synchronous_commit = off",),
                         note="SET LOCAL synchronous_commit = off: the commit does not wait for the WAL flush"),
        constraint_build("wal_compression_lz4", shipped, settings=("wal_compression = lz4",),
                         note="superuser-only setting (not available on Supabase)"),
    ]
    for build in knobs:
        try:
            measured = measure_build(url, build)
        except psycopg.Error as exc:
            measured = {"name": build.name, "error": str(exc).splitlines()[0], "note": build.note}
        results["knobs"].append(measured)
        progress(f"  knob {build.name:<20} lock {measured.get('lock_s') or 0:.2f}s cpu {measured.get('cpu_s') or 0:.2f}s")
    results["heap_order"] = heap_order(url, progress)
    return results


def heap_order(url: URL, progress: Progress) -> list[dict[str, Any]]:
    """The shared dataset is stored resource by resource; production rows arrive in booking order.

    Both are copied into fresh tables (same rows, one as stored, one shuffled)
    and the shipped and seed guards built on each, to see whether the key
    order's advantage depends on the physical order of the heap.
    """
    out = []
    with connect(url) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench_heap")
        conn.execute("CREATE TABLE bench_heap.alloc_stored AS SELECT * FROM public.allocations")
        conn.execute("CREATE TABLE bench_heap.alloc_shuffled AS SELECT * FROM public.allocations ORDER BY random()")
        conn.execute("VACUUM (ANALYZE) bench_heap.alloc_stored")
        conn.execute("VACUUM (ANALYZE) bench_heap.alloc_shuffled")
    try:
        for table in ("bench_heap.alloc_stored", "bench_heap.alloc_shuffled"):
            for name, key in (("shipped", shipped_key()), ("seed", SEED_KEY)):
                cname = f"bench_heap_{name}"
                sample = timed_statements(url, (constraint_sql(cname, key, table=table),))
                with connect(url) as conn:
                    conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {cname}")
                out.append({"table": table, "key": key_label(key), "order": name,
                            "wall_s": r3(sample.wall_s), "cpu_s": r3(sample.cpu_s)})
                progress(f"  heap {table:<20} {name:<8} wall {sample.wall_s:.2f}s cpu {sample.cpu_s or 0:.2f}s")
    finally:
        with connect(url) as conn:
            conn.execute("DROP SCHEMA bench_heap CASCADE")
    return out


def predict(url: URL, direction: str) -> dict[str, Any]:
    with connect(url) as conn:
        cpu0 = proc_cpu_s(conn.info.backend_pid)
        p = predictor.predict_swap_hold(conn, direction)
        cpu1 = proc_cpu_s(conn.info.backend_pid)
    return {"predicted_s": r3(p.seconds), "method": p.method, "sample_live_rows": p.sample_live_rows,
            "sample_build_s": r3(p.sample_build_s), "elapsed_s": r3(p.elapsed_s),
            "cpu_s": None if cpu0 is None or cpu1 is None else r3(cpu1 - cpu0)}


def swap_series(url: URL, options: Options, progress: Progress, *, main: bool) -> dict[str, Any]:
    """The real migration and the floors, ``repeats`` times interleaved, from 0003; ends at head.

    Order per repetition: upgrade head, (first time: probes at head and the
    downgrade prediction), downgrade -1, floors (ending with the old guard
    rebuilt, so the database is at 0003 again). A last upgrade leaves it at
    head, and is one more upgrade sample.
    """
    result: dict[str, Any] = {"upgrade": [], "downgrade": [], "floors": []}
    with connect(url) as conn:
        params = probes.sample_parameters(conn)
    if main:
        progress("probes at 0003 (old guard)")
        result["probe_before"] = measure_probes(url, params, options)
    progress("predicting the upgrade's hold")
    result["predict_upgrade"] = predict(url, "upgrade")
    for rep in range(options.repeats):
        sample = timed_migration(url, lambda: alembic_runner.upgrade(url, "head"))
        result["upgrade"].append(sample.as_dict())
        progress(f"rep {rep + 1}: upgrade head: lock {sample.lock_s:.2f}s (command {sample.wall_s:.2f}s)")
        if rep == 0:
            if main:
                result["probe_after"] = measure_probes(url, params, options)
            result["predict_downgrade"] = predict(url, "downgrade")
        sample = timed_migration(url, lambda: alembic_runner.downgrade(url, "-1"))
        result["downgrade"].append(sample.as_dict())
        progress(f"rep {rep + 1}: downgrade -1: lock {sample.lock_s:.2f}s (command {sample.wall_s:.2f}s)")
        measured, explored = floors(url, rep, params if (main and rep == 0) else None, options, progress,
                                    exploring=main and rep == 0 and options.explore)
        result["floors"].append(measured)
        if explored is not None:
            result["explore"] = explored
    sample = timed_migration(url, lambda: alembic_runner.upgrade(url, "head"))
    result["upgrade"].append(sample.as_dict())
    progress(f"final upgrade head: lock {sample.lock_s:.2f}s")
    return result


def summarize_swap(series: dict[str, Any], rows: int) -> dict[str, Any]:
    floors_by = {k: [rep[k] for rep in series["floors"]] for k in ("floor_new", "floor_old", "seed_order", "index_only")}
    swap = {
        "upgrade_lock_s": headline(series["upgrade"]),
        "downgrade_lock_s": headline(series["downgrade"]),
        "floor_new_s": headline(floors_by["floor_new"]),
        "floor_old_s": headline(floors_by["floor_old"]),
        "seed_order_s": headline(floors_by["seed_order"]),
        "index_only_s": headline(floors_by["index_only"], "wall_s"),
        "upgrade_cpu_s": headline(series["upgrade"], "cpu_s"),
        "downgrade_cpu_s": headline(series["downgrade"], "cpu_s"),
        "floor_new_cpu_s": headline(floors_by["floor_new"], "cpu_s"),
        "floor_old_cpu_s": headline(floors_by["floor_old"], "cpu_s"),
        "seed_order_cpu_s": headline(floors_by["seed_order"], "cpu_s"),
        "index_only_cpu_s": headline(floors_by["index_only"], "cpu_s"),
        "upgrade_command_s": headline(series["upgrade"], "wall_s"),
        "downgrade_command_s": headline(series["downgrade"], "wall_s"),
        "shipped_key": key_label(shipped_key()),
        "seed_key": key_label(SEED_KEY),
        "statistic": f"min of {len(series['upgrade'])} upgrades, {len(series['downgrade'])} downgrades, "
                     f"{len(series['floors'])} of each floor (all samples under samples.*)",
    }
    swap["rows"] = rows
    return swap


# ---------------------------------------------------------------- confirm throughput (pgbench)

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


def run_pgbench(server: EphemeralPostgres, dbname: str, clients: int, per_client: int, first: int,
                workdir: Path) -> PgbenchRun:
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
    latencies = []
    for path in glob.glob(f"{prefix}*"):
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)
        os.unlink(path)
    return PgbenchRun(clients * per_client, tps, latencies)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (in hundredths) of ``values``, linearly interpolated (statistics' 'inclusive')."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def confirm_benchmark(server: EphemeralPostgres, dbname: str, options: Options, progress: Progress) -> dict[str, Any]:
    """v11 against v12 at head (the same guard for both), in interleaved rounds, holds prepared in advance."""
    url = server.url(dbname)
    pool = HoldPool(url)
    pool.setup()
    workdir = Path(tempfile.mkdtemp(prefix="reserve-bench-"))
    try:
        # Calibrate the run length: one client, v12, a short run.
        warm_first, _ = pool.add(300)
        install_confirm(url, "v12")
        warm = run_pgbench(server, dbname, 1, 300, warm_first, workdir)
        per_client = {c: max(50, int(options.confirm_seconds * warm.tps / c)) for c in options.confirm_clients}
        needed = options.confirm_rounds * 2 * sum(c * per_client[c] for c in options.confirm_clients)
        progress(f"confirm: single-client v12 warm-up {warm.tps:.0f} tps; preparing {needed:,} holds")
        first, _ = pool.add(needed)
        cursor = first
        runs: dict[tuple[str, int], list[PgbenchRun]] = {}
        for clients in options.confirm_clients:
            for round_no in range(options.confirm_rounds):
                order = ("v11", "v12") if round_no % 2 == 0 else ("v12", "v11")
                for version in order:
                    install_confirm(url, version)
                    checkpoint(url)
                    count = clients * per_client[clients]
                    run = run_pgbench(server, dbname, clients, per_client[clients], cursor, workdir)
                    left = pool.left(cursor, cursor + count - 1)
                    if left:
                        raise RuntimeError(f"{left} holds of a {version} run were not confirmed")
                    cursor += count
                    runs.setdefault((version, clients), []).append(run)
                    progress(f"  {version} c={clients} round {round_no + 1}: {run.tps:7.1f} tps, "
                             f"p95 {quantile(run.latencies_ms, 0.95):6.2f} ms")
        install_confirm(url, "v12")  # leave head as it ships
        with connect(url) as conn:
            evidence = conn.execute("SELECT count(*) FROM public.booking_confirmation_results").fetchone()[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, Any] = {"v11": {"tps": {}, "p95_ms": {}, "p50_ms": {}, "transactions": {}},
                           "v12": {"tps": {}, "p95_ms": {}, "p50_ms": {}, "transactions": {}}}
    for (version, clients), measured in runs.items():
        latencies = [x for run in measured for x in run.latencies_ms]
        seconds = sum(run.transactions / run.tps for run in measured)
        txns = sum(run.transactions for run in measured)
        out[version]["tps"][str(clients)] = round(txns / seconds, 1)
        out[version]["p95_ms"][str(clients)] = round(quantile(latencies, 0.95), 3)
        out[version]["p50_ms"][str(clients)] = round(quantile(latencies, 0.50), 3)
        out[version]["transactions"][str(clients)] = txns
    out["p95_ratio"] = {str(c): round(out["v12"]["p95_ms"][str(c)] / out["v11"]["p95_ms"][str(c)], 3)
                        for c in options.confirm_clients}
    out["tps_ratio"] = {str(c): round(out["v12"]["tps"][str(c)] / out["v11"]["tps"][str(c)], 3)
                        for c in options.confirm_clients}
    out["method"] = (f"pgbench -M prepared, one confirm per transaction (single-table holds with an idempotency key, "
                     f"booking pending -> confirmed), {options.confirm_rounds} interleaved rounds per version and "
                     f"client count, both versions at head; per-client transactions {per_client}")
    out["evidence_rows"] = evidence
    return out


# ---------------------------------------------------------------- facts about the server

def environment(url: URL) -> dict[str, Any]:
    with connect(url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name = ANY(%s)",
            (["shared_buffers", "maintenance_work_mem", "max_wal_size", "fsync", "synchronous_commit",
              "full_page_writes", "wal_level", "effective_cache_size", "max_parallel_maintenance_workers"],),
        ).fetchall())
        version = conn.execute("SHOW server_version").fetchone()[0]
        btree_gist = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'btree_gist'").fetchone()
        sortsupport = dict(conn.execute(
            """SELECT opc.opcname, EXISTS (SELECT 1 FROM pg_amproc p WHERE p.amprocfamily = opc.opcfamily AND p.amprocnum = 11)
               FROM pg_opclass opc JOIN pg_am am ON am.oid = opc.opcmethod
               WHERE am.amname = 'gist' AND opc.opcname IN ('gist_uuid_ops', 'gist_text_ops', 'range_ops')""").fetchall())
    return {
        "server_version": version,
        "btree_gist": btree_gist[0] if btree_gist else None,
        "gist_sortsupport": sortsupport,
        "gist_sorted_build_possible": all(sortsupport.values()) and bool(sortsupport),
        "settings": settings,
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------- the whole run

def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    swap, probe, confirm, pred = result["swap"], result.get("probe", {}), result.get("confirm"), result["predictor"]
    out: dict[str, Any] = {
        "upgrade_lock_over_floor_new": {"value": ratio(swap["upgrade_lock_s"], swap["floor_new_s"]), "limit": "<= 1.10"},
        "downgrade_lock_over_floor_old": {"value": ratio(swap["downgrade_lock_s"], swap["floor_old_s"]), "limit": "<= 1.10"},
        "floor_new_over_seed_order": {"value": ratio(swap["floor_new_s"], swap["seed_order_s"]), "limit": "<= 0.70"},
        "predictor_error": {"value": pred.get("error_pct"), "limit": "within +-25%"},
    }
    out["upgrade_lock_over_floor_new"]["met"] = (out["upgrade_lock_over_floor_new"]["value"] or 99) <= 1.10
    out["downgrade_lock_over_floor_old"]["met"] = (out["downgrade_lock_over_floor_old"]["value"] or 99) <= 1.10
    out["floor_new_over_seed_order"]["met"] = (out["floor_new_over_seed_order"]["value"] or 99) <= 0.70
    out["predictor_error"]["met"] = pred.get("error_pct") is not None and abs(pred["error_pct"]) <= 25
    rs = probe.get("restaurant_scoped")
    if rs:
        seed_p95 = result.get("samples", {}).get("seed_order_restaurant_p95_ms")
        below_seed = seed_p95 is None or rs["after_p95_ms"] < seed_p95
        out["restaurant_probe_after_p95"] = {"value": rs["after_p95_ms"], "limit": "<= 1.0 ms and below the seed order's",
                                             "seed_order_p95_ms": seed_p95, "met": rs["after_p95_ms"] <= 1.0 and below_seed}
        gain = ratio(rs["before_p95_ms"], rs["after_p95_ms"])
        out["restaurant_probe_gain"] = {"value": gain, "limit": ">= 50x", "met": (gain or 0) >= 50}
    if confirm:
        worst = max(confirm["p95_ratio"].values())
        out["confirm_v12_over_v11_p95"] = {"value": confirm["p95_ratio"], "limit": "<= 1.15 at every concurrency",
                                           "met": worst <= 1.15}
    return out


def run(options: Options, progress: Progress = print, *, server: EphemeralPostgres | None = None,
        dbname: str = "bench") -> dict[str, Any]:
    """One complete benchmark; returns the results document.

    On a fresh throw-away server with fsync on (``make bench``), or on the
    given local ``server`` (tests), in database ``dbname`` which it creates.
    """
    started = time.time()
    result: dict[str, Any] = {"rows": options.rows}
    in_guards_py = guards.NEW_GUARD.key
    with ExitStack() as stack:
        stack.enter_context(proposed_key(options.proposed_key))
        own_server = server is None
        if server is None:
            server = stack.enter_context(EphemeralPostgres(fsync=True, settings=options.server_settings))
        url = create_database(server, dbname)
        if not own_server:
            stack.callback(drop_database, server, dbname)
        progress(f"loading {options.rows:,} allocations")
        result["dataset"] = load(url, options.rows, progress)
        result["environment"] = environment(url)
        series = swap_series(url, options, progress, main=True)
        result["swap"] = summarize_swap(series, result["dataset"]["counts"]["allocations"])
        result["swap"]["key_source"] = ("reserve/schema/guards.py NEW_GUARD" if shipped_key() == in_guards_py else
                                        f"proposed for NEW_GUARD (reserve/schema/guards.py ships ({key_label(in_guards_py)}))")
        result["probe"] = probe_summary(series)
        result["predictor"] = predictor_summary(series, result["swap"])
        result["samples"] = {"upgrade": series["upgrade"], "downgrade": series["downgrade"], "floors": series["floors"],
                             "probe_before": series["probe_before"], "probe_after": series["probe_after"]}
        first_floors = series["floors"][0]
        if "probe" in first_floors["seed_order"]:
            result["samples"]["seed_order_restaurant_p95_ms"] = first_floors["seed_order"]["probe"]["restaurant_scoped"]["p95_ms"]
            result["probe"]["restaurant_scoped"]["seed_order_p95_ms"] = result["samples"]["seed_order_restaurant_p95_ms"]
            result["probe"]["point"]["seed_order_p95_ms"] = first_floors["seed_order"]["probe"]["point"]["p95_ms"]
        if "explore" in series:
            result["explore"] = summarize_explore(series, result["swap"])
        scaling = [scaling_point(result["swap"], result["predictor"], result["dataset"])]
        for size in sorted(s for s in options.scaling if s != options.rows):
            progress(f"scaling point: {size:,} allocations")
            name = f"{dbname}_{size}"
            small_url = create_database(server, name)
            loaded = load(small_url, size, progress)
            small = swap_series(small_url, replace(options, explore=False), progress, main=False)
            small_swap = summarize_swap(small, loaded["counts"]["allocations"])
            scaling.append(scaling_point(small_swap, predictor_summary(small, small_swap), loaded))
            drop_database(server, name)
        result["scaling"] = sorted(scaling, key=lambda p: p["rows"])
        if options.confirm:
            progress("confirm throughput: v11 against v12")
            result["confirm"] = confirm_benchmark(server, dbname, options, progress)
        result["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = targets(result)
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def probe_summary(series: dict[str, Any]) -> dict[str, Any]:
    before, after = series["probe_before"], series["probe_after"]
    out = {}
    for name in ("restaurant_scoped", "point"):
        out[name] = {"before_p50_ms": before[name]["p50_ms"], "before_p95_ms": before[name]["p95_ms"],
                     "after_p50_ms": after[name]["p50_ms"], "after_p95_ms": after[name]["p95_ms"],
                     "before_plan": before[name]["plan"], "after_plan": after[name]["plan"]}
    return out


def predictor_summary(series: dict[str, Any], swap: dict[str, Any]) -> dict[str, Any]:
    up, down = series["predict_upgrade"], series["predict_downgrade"]

    def error(predicted: float, actual: float | None) -> float | None:
        return None if not actual else round(100.0 * (predicted - actual) / actual, 1)

    return {
        "predicted_s": up["predicted_s"], "actual_s": swap["upgrade_lock_s"],
        "error_pct": error(up["predicted_s"], swap["upgrade_lock_s"]),
        "method": up["method"], "elapsed_s": up["elapsed_s"], "sample_build_s": up["sample_build_s"],
        "cpu_s": up.get("cpu_s"),
        "downgrade": {"predicted_s": down["predicted_s"], "actual_s": swap["downgrade_lock_s"],
                      "error_pct": error(down["predicted_s"], swap["downgrade_lock_s"]),
                      "elapsed_s": down["elapsed_s"], "sample_build_s": down["sample_build_s"]},
        "calibration": predictor.CALIBRATION,
    }


def scaling_point(swap: dict[str, Any], pred: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    keys = ("upgrade_lock_s", "downgrade_lock_s", "floor_new_s", "floor_old_s", "seed_order_s", "index_only_s",
            "upgrade_cpu_s", "downgrade_cpu_s", "floor_new_cpu_s", "floor_old_cpu_s")
    return {"rows": swap["rows"], "live_rows": loaded["live_allocations"], **{k: swap[k] for k in keys},
            "predicted_upgrade_s": pred["predicted_s"], "predicted_downgrade_s": pred["downgrade"]["predicted_s"],
            "predictor_error_pct": pred["error_pct"], "predictor_downgrade_error_pct": pred["downgrade"]["error_pct"]}


def summarize_explore(series: dict[str, Any], swap: dict[str, Any]) -> dict[str, Any]:
    first = series["floors"][0]
    explored = series["explore"]
    orders = []
    for label, entry in (("shipped", first["floor_new"]), ("seed", first["seed_order"])):
        orders.append({"key": entry["key"], "role": label, "lock_s": entry["lock_s"], "cpu_s": entry["cpu_s"],
                       "index_mb": entry.get("index_mb"),
                       "restaurant_p95_ms": entry["probe"]["restaurant_scoped"]["p95_ms"],
                       "point_p95_ms": entry["probe"]["point"]["p95_ms"]})
    for entry in explored["key_orders"]:
        orders.append({"key": entry["key"], "role": "candidate", "lock_s": entry["lock_s"], "cpu_s": entry["cpu_s"],
                       "index_mb": entry.get("index_mb"),
                       "restaurant_p95_ms": entry["probe"]["restaurant_scoped"]["p95_ms"],
                       "point_p95_ms": entry["probe"]["point"]["p95_ms"]})
    seed_cpu = first["seed_order"]["cpu_s"]
    seed_lock = first["seed_order"]["lock_s"]
    for order in orders:
        order["lock_vs_seed"] = ratio(order["lock_s"], seed_lock)
        order["cpu_vs_seed"] = ratio(order["cpu_s"], seed_cpu)
    knobs = explored["knobs"]
    base = next((k for k in knobs if k["name"] == "shipped_again" and "lock_s" in k), None)
    for knob in knobs:
        if base and knob.get("lock_s") is not None:
            knob["lock_vs_baseline"] = ratio(knob["lock_s"], base["lock_s"])
            knob["cpu_vs_baseline"] = ratio(knob["cpu_s"], base["cpu_s"])
    return {"key_orders": orders, "knobs": knobs, "heap_order": explored.get("heap_order", [])}

