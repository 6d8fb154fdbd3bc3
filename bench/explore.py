"""The exploration: other key orders and every knob that could shorten the swap's hold, each built bare.

Run once, on the bare table between the first floors and the old guard's
rebuild (bench/swap.py), so that every candidate is measured on the same
data as the shipped key; and the physical order of the heap, on copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from bench.bare import measure_build
from bench.builds import SEED_KEY, Build, constraint_build, constraint_sql, key_label, order_name
from bench.instruments import Progress, connect, r3, timed_statements
from bench.options import Options
from bench.summary import ratio

HEAP_TABLES = ("bench_heap.alloc_stored", "bench_heap.alloc_shuffled")


def explore(url: URL, key: tuple[str, ...], probe_params: dict[str, Any], options: Options,
            progress: Progress) -> dict[str, Any]:
    """Other key orders, and every knob on the shipped ``key``, each built bare on the same (bare) table."""
    return {"key_orders": key_orders(url, key, probe_params, options, progress),
            "knobs": knobs(url, key, progress),
            "heap_order": heap_order(url, key, progress)}


def key_orders(url: URL, key: tuple[str, ...], probe_params: dict[str, Any], options: Options,
               progress: Progress) -> list[dict[str, Any]]:
    """Each candidate order but the shipped ``key`` and the seed's (measured by the floors, with probes)."""
    measured_orders = []
    for candidate in options.key_candidates:
        if tuple(candidate) in (key, SEED_KEY):
            continue
        build = constraint_build("k_" + order_name(candidate), candidate)
        measured = measure_build(url, build, probe_params=probe_params, options=options)
        measured_orders.append(measured)
        progress(f"  key ({key_label(candidate)}): lock {measured['lock_s']:.2f}s cpu {measured['cpu_s'] or 0:.2f}s "
                 f"restaurant p95 {measured['probe']['restaurant_scoped']['p95_ms']:.3f}ms")
    return measured_orders


def knob_builds(key: Sequence[str]) -> list[Build]:
    """The shipped build again (the baseline), then once per session- or definition-level knob."""
    return [
        constraint_build("shipped_again", key, note="the shipped build again, as this series' baseline"),
        constraint_build("mwm_1gb", key, settings=("maintenance_work_mem = '1GB'",),
                         note="SET LOCAL maintenance_work_mem (default 64MB)"),
        constraint_build("buffering_on", key, with_params="buffering = on",
                         note="GiST buffering build forced on (default auto: only beyond effective_cache_size)"),
        constraint_build("fillfactor_100", key, with_params="fillfactor = 100",
                         note="GiST pages packed full (default 90)"),
        constraint_build("sync_commit_off", key, settings=("synchronous_commit = off",),
                         note="SET LOCAL synchronous_commit = off: the commit does not wait for the WAL flush"),
        constraint_build("wal_compression_lz4", key, settings=("wal_compression = lz4",),
                         note="superuser-only setting (not available on Supabase)"),
    ]


def knobs(url: URL, key: Sequence[str], progress: Progress) -> list[dict[str, Any]]:
    """Each knob's build, timed; a knob the server refuses is recorded with its error."""
    out = []
    for build in knob_builds(key):
        try:
            measured = measure_build(url, build)
        except psycopg.Error as exc:
            measured = {"name": build.name, "error": str(exc).splitlines()[0], "note": build.note}
        out.append(measured)
        progress(f"  knob {build.name:<20} lock {measured.get('lock_s') or 0:.2f}s cpu {measured.get('cpu_s') or 0:.2f}s")
    return out


def heap_order(url: URL, key: tuple[str, ...], progress: Progress) -> list[dict[str, Any]]:
    """The shared dataset is stored resource by resource; production rows arrive in booking order.

    Both are copied into fresh tables (same rows, one as stored, one shuffled)
    and the shipped (``key``) and seed guards built on each, to see whether the
    key order's advantage depends on the physical order of the heap.
    """
    copy_heaps(url)
    out = []
    try:
        for table in HEAP_TABLES:
            for name, order in (("shipped", key), ("seed", SEED_KEY)):
                out.append(heap_build(url, table, name, order, progress))
    finally:
        with connect(url) as conn:
            conn.execute("DROP SCHEMA bench_heap CASCADE")
    return out


def copy_heaps(url: URL) -> None:
    stored, shuffled = HEAP_TABLES
    with connect(url) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench_heap")
        conn.execute(f"CREATE TABLE {stored} AS SELECT * FROM public.allocations")
        conn.execute(f"CREATE TABLE {shuffled} AS SELECT * FROM public.allocations ORDER BY random()")
        conn.execute(f"VACUUM (ANALYZE) {stored}")
        conn.execute(f"VACUUM (ANALYZE) {shuffled}")


def heap_build(url: URL, table: str, name: str, key: Sequence[str], progress: Progress) -> dict[str, Any]:
    cname = f"bench_heap_{name}"
    sample = timed_statements(url, (constraint_sql(cname, key, table=table),))
    with connect(url) as conn:
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {cname}")
    progress(f"  heap {table:<20} {name:<8} wall {sample.wall_s:.2f}s cpu {sample.cpu_s or 0:.2f}s")
    return {"table": table, "key": key_label(key), "order": name, "wall_s": r3(sample.wall_s), "cpu_s": r3(sample.cpu_s)}


def order_entry(entry: dict[str, Any], role: str) -> dict[str, Any]:
    return {"key": entry["key"], "role": role, "lock_s": entry["lock_s"], "cpu_s": entry["cpu_s"],
            "index_mb": entry.get("index_mb"),
            "restaurant_p95_ms": entry["probe"]["restaurant_scoped"]["p95_ms"],
            "point_p95_ms": entry["probe"]["point"]["p95_ms"]}


def summarize_explore(series: dict[str, Any]) -> dict[str, Any]:
    """Every key order (shipped and seed from the first floors) against the seed's, every knob against the baseline."""
    first = series["floors"][0]
    explored = series["explore"]
    orders = [order_entry(first["floor_new"], "shipped"), order_entry(first["seed_order"], "seed")]
    orders += [order_entry(entry, "candidate") for entry in explored["key_orders"]]
    seed_cpu = first["seed_order"]["cpu_s"]
    seed_lock = first["seed_order"]["lock_s"]
    for order in orders:
        order["lock_vs_seed"] = ratio(order["lock_s"], seed_lock)
        order["cpu_vs_seed"] = ratio(order["cpu_s"], seed_cpu)
    knobs_measured = explored["knobs"]
    base = next((k for k in knobs_measured if k["name"] == "shipped_again" and "lock_s" in k), None)
    for knob in knobs_measured:
        if base and knob.get("lock_s") is not None:
            knob["lock_vs_baseline"] = ratio(knob["lock_s"], base["lock_s"])
            knob["cpu_vs_baseline"] = ratio(knob["cpu_s"], base["cpu_s"])
    return {"key_orders": orders, "knobs": knobs_measured, "heap_order": explored.get("heap_order", [])}
