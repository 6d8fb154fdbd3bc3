"""The swap measured: the real ``alembic upgrade head`` and ``downgrade -1`` against their floors.

The floors are what the swap cannot beat: a bare ``ADD CONSTRAINT`` of the
guard under test, of the old guard and of the seed's key order, and a plain
``CREATE INDEX``, on the same table. Each is measured ``repeats`` times,
interleaved with the migration; the headline is the minimum (the least
disturbed by other work on the machine). The guard under test is passed in
(``guards.NEW_GUARD`` or a proposed key order) and handed to each Alembic run
and to the predictor explicitly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from bench.bare import drop_guards, measure_build, restore_redundant_index
from bench.builds import SEED_KEY, Build, constraint_build, index_build, key_label, old_guard_build
from bench.explore import explore
from bench.instruments import Progress, Sample, connect, r3, timed_migration
from bench.options import Options
from bench.probing import measure_probes, sample_parameters
from reserve.rollout import alembic_runner, predictor
from reserve.rollout.lockwatch import proc_cpu_s
from reserve.schema.guards import Guard

# This series measures the locked method (the fallback, and the floor the online one is held to):
# bench/online.py measures the online one, the default.
LOCKED = ["swap_method=locked"]


def upgrade_head(url: URL, guard: Guard) -> Sample:
    """The real ``alembic upgrade head -x swap_method=locked``, installing ``guard`` for this one run, timed."""
    return timed_migration(url, lambda: alembic_runner.upgrade(url, "head", LOCKED, new_guard=guard))


def downgrade_one(url: URL, guard: Guard) -> Sample:
    """The real ``alembic downgrade -1 -x swap_method=locked``, taking ``guard`` away for this one run, timed."""
    return timed_migration(url, lambda: alembic_runner.downgrade(url, "-1", LOCKED, new_guard=guard))


def predict(url: URL, direction: str, guard: Guard) -> dict[str, Any]:
    """``reserve preflight``'s prediction of the hold, for ``guard`` on the way up."""
    with connect(url) as conn:
        cpu0 = proc_cpu_s(conn.info.backend_pid)
        p = predictor.predict_swap_hold(conn, direction, guard=guard)
        cpu1 = proc_cpu_s(conn.info.backend_pid)
    return {"predicted_s": r3(p.seconds), "method": p.method, "sample_live_rows": p.sample_live_rows,
            "sample_build_s": r3(p.sample_build_s), "elapsed_s": r3(p.elapsed_s),
            "cpu_s": None if cpu0 is None or cpu1 is None else r3(cpu1 - cpu0)}


def floor_builds(key: tuple[str, ...], rep: int) -> list[tuple[str, Build]]:
    """The bare builds of one repetition, in alternating order from one repetition to the next."""
    builds = [
        ("floor_new", constraint_build("shipped", key)),
        ("seed_order", constraint_build("seed", SEED_KEY)),
        ("index_only", index_build("index_only", key)),
    ]
    if rep % 2 == 1:
        builds.reverse()
    return builds


def report(progress: Progress, label: str, measured: dict[str, Any]) -> None:
    progress(f"  {label:<11} lock {measured['lock_s']:7.2f}s  wall {measured['wall_s']:7.2f}s  "
             f"cpu {measured['cpu_s'] or 0:7.2f}s")


def floors(url: URL, rep: int, key: tuple[str, ...], probe_params: dict[str, Any] | None, options: Options,
           progress: Progress, *, exploring: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """At 0003: drop the old guard, time the bare builds (``key`` as shipped), and end by rebuilding the old
    guard (timed too).

    With ``exploring``, the other key orders and knobs are built on the bare
    table too, before the old guard comes back.
    """
    drop_guards(url)
    out: dict[str, dict[str, Any]] = {}
    explored = None
    try:
        for label, build in floor_builds(key, rep):
            with_probe = probe_params is not None and label != "index_only"
            out[label] = measure_build(url, build, probe_params=probe_params if with_probe else None, options=options)
            report(progress, label, out[label])
        if exploring and probe_params is not None:
            progress("exploring key orders and knobs")
            explored = explore(url, key, probe_params, options, progress)
    finally:
        out["floor_old"] = measure_build(url, old_guard_build(), keep=True)
        report(progress, "floor_old", out["floor_old"])
        restore_redundant_index(url)
    return out, explored


def swap_series(url: URL, guard: Guard, options: Options, progress: Progress, *, main: bool) -> dict[str, Any]:
    """The real migration (installing ``guard``) and the floors, ``repeats`` times interleaved, from 0003;
    ends at head.

    Order per repetition: upgrade head, (first time: probes at head and the
    downgrade prediction), downgrade -1, floors (ending with the old guard
    rebuilt, so the database is at 0003 again). A last upgrade leaves it at
    head, and is one more upgrade sample.
    """
    result: dict[str, Any] = {"upgrade": [], "downgrade": [], "floors": []}
    params = sample_parameters(url)
    if main:
        progress("probes at 0003 (old guard)")
        result["probe_before"] = measure_probes(url, params, options)
    progress("predicting the upgrade's hold")
    result["predict_upgrade"] = predict(url, "upgrade", guard)
    for rep in range(options.repeats):
        sample = upgrade_head(url, guard)
        result["upgrade"].append(sample.as_dict())
        progress(f"rep {rep + 1}: upgrade head: lock {sample.lock_s:.2f}s (command {sample.wall_s:.2f}s)")
        if rep == 0:
            if main:
                result["probe_after"] = measure_probes(url, params, options)
            result["predict_downgrade"] = predict(url, "downgrade", guard)
        sample = downgrade_one(url, guard)
        result["downgrade"].append(sample.as_dict())
        progress(f"rep {rep + 1}: downgrade -1: lock {sample.lock_s:.2f}s (command {sample.wall_s:.2f}s)")
        first = main and rep == 0
        measured, explored = floors(url, rep, guard.key, params if first else None, options, progress,
                                    exploring=first and options.explore)
        result["floors"].append(measured)
        if explored is not None:
            result["explore"] = explored
    sample = upgrade_head(url, guard)
    result["upgrade"].append(sample.as_dict())
    progress(f"final upgrade head: lock {sample.lock_s:.2f}s")
    return result


def headline(samples: list[dict[str, Any]], field_name: str = "lock_s") -> float | None:
    """The least disturbed sample: the minimum of ``field_name`` over the repetitions."""
    values = [s[field_name] for s in samples if s.get(field_name) is not None]
    return min(values) if values else None


def summarize_swap(series: dict[str, Any], rows: int, key: tuple[str, ...]) -> dict[str, Any]:
    """The headline figures of the swap and its floors; ``key`` is the key order measured as shipped."""
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
        "shipped_key": key_label(key),
        "seed_key": key_label(SEED_KEY),
        "statistic": f"min of {len(series['upgrade'])} upgrades, {len(series['downgrade'])} downgrades, "
                     f"{len(series['floors'])} of each floor (all samples under samples.*)",
    }
    swap["rows"] = rows
    return swap
