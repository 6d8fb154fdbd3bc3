"""Benchmarks at scale: the swap's lock hold, the overlap probes, confirm throughput.

The whole run, and the results document it returns (bench/run.py writes it,
bench/render.py renders it). Everything is measured side by side in one run
on one throw-away server (``EphemeralPostgres(fsync=True)``), so that what
matters is a ratio, not an absolute number on a noisy shared machine:

- **online** (bench/online.py): the default method's ACCESS EXCLUSIVE hold
  (milliseconds, whatever the size), its background wall time against the
  locked method's floor build, the rollback inside the window and after it,
  and what the window's capture costs a confirm under pgbench.
- **swap** (bench/swap.py): the locked method's ACCESS EXCLUSIVE hold of the real ``alembic
  upgrade head`` (from 0003) and ``alembic downgrade -1``, seen from the
  database (bench/instruments.py), against the floors: a bare ``ALTER TABLE …
  ADD CONSTRAINT`` of the guard under test, of the old guard and of the seed's
  key order, and a plain ``CREATE INDEX`` with the key under test. Each is
  measured ``repeats`` times, interleaved; the headline is the minimum, every
  sample is kept. The lock holder's CPU time is recorded too.
- **probe** (bench/probing.py): the checklist's overlap probes at 0003 (old
  guard) and at head, p50/p95 of wall time from the client.
- **confirm** (bench/confirm.py): ``confirm_hold_assignment_tx`` v11 against
  v12 under pgbench at 1, 4 and 8 clients, in interleaved rounds.
- **predictor**: ``reserve.rollout.predictor`` against the measured hold.
- **explore** (bench/explore.py): other key orders and every knob that could
  shorten the hold, each built bare on the same data.
- **scaling**: the swap at smaller sizes, for the plot of hold against rows.

The key order measured as "shipped" is ``guards.NEW_GUARD.key`` unless
``Options.proposed_key`` proposes another: the guard is then passed
explicitly to each Alembic run, the predictor and the floors; nothing global
is replaced.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import URL

from bench import online
from bench.builds import key_label
from bench.confirm import Pgbench, confirm_benchmark
from bench.data import create_database, drop_database, environment, load, loadavg
from bench.explore import summarize_explore
from bench.instruments import Progress
from bench.options import Options
from bench.summary import online_targets, predictor_summary, probe_summary, scaling_point, targets
from bench.swap import summarize_swap, swap_series
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import guards
from reserve.schema.guards import Guard


def run(options: Options, progress: Progress = print, *, server: EphemeralPostgres | None = None,
        dbname: str = "bench") -> dict[str, Any]:
    """One complete benchmark; returns the results document.

    On a fresh throw-away server with fsync on (``make bench``), or on the
    given local ``server`` (tests), in database ``dbname`` which it creates.
    """
    started = time.time()
    guard = options.new_guard
    result: dict[str, Any] = {"rows": options.rows}
    with ExitStack() as stack:
        own_server = server is None
        if server is None:
            server = stack.enter_context(EphemeralPostgres(fsync=True, settings=options.server_settings))
        url = create_database(server, dbname)
        if not own_server:
            stack.callback(drop_database, server, dbname)
        pgbench = online.pgbench_for(server if options.confirm else None, dbname)
        stack.callback(online.discard, pgbench)
        measure_main(result, url, guard, options, progress, pgbench=pgbench)
        result["scaling"] = scaling(server, dbname, result, guard, options, progress)
        if options.confirm:
            progress("confirm throughput: v11 against v12")
            result["confirm"] = confirm_benchmark(server, dbname, options, progress)
        result["environment"]["loadavg_end"] = loadavg()
    result["targets"] = targets(result)
    result["targets"] |= online_targets(result)
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def key_source(guard: Guard) -> str:
    """Where the key order measured as shipped comes from, for the reader of the results."""
    if guard.key == guards.NEW_GUARD.key:
        return "reserve/schema/guards.py NEW_GUARD"
    return f"proposed for NEW_GUARD (reserve/schema/guards.py ships ({key_label(guards.NEW_GUARD.key)}))"


def measure_main(result: dict[str, Any], url: URL, guard: Guard, options: Options, progress: Progress, *,
                 pgbench: Pgbench | None = None) -> None:
    """The main dataset: load, the locked series with probes (and exploration), the online series (with the
    window's cost to a confirm), and their summaries."""
    progress(f"loading {options.rows:,} allocations")
    result["dataset"] = load(url, options.rows, progress)
    result["environment"] = environment(url)
    progress("the locked method (-x swap_method=locked) and its floors")
    series = swap_series(url, guard, options, progress, main=True)
    progress("the online method (-x swap_method=online)")
    online_measured = online.online_series(url, guard, options, progress, pgbench=pgbench)
    result["swap"] = summarize_swap(series, result["dataset"]["counts"]["allocations"], guard.key)
    result["swap"]["key_source"] = key_source(guard)
    result["swap"]["online"] = online.summarize_online(online_measured, result["swap"]["floor_new_s"])
    result["samples_online"] = online_measured
    result["probe"] = probe_summary(series)
    result["predictor"] = predictor_summary(series, result["swap"])
    result["samples"] = {"upgrade": series["upgrade"], "downgrade": series["downgrade"], "floors": series["floors"],
                         "probe_before": series["probe_before"], "probe_after": series["probe_after"]}
    add_seed_order_probes(result, series["floors"][0])
    if "explore" in series:
        result["explore"] = summarize_explore(series)


def add_seed_order_probes(result: dict[str, Any], first_floors: dict[str, Any]) -> None:
    """The probes on the seed's key order (first floors), beside the shipped guard's."""
    if "probe" not in first_floors["seed_order"]:
        return
    seed = first_floors["seed_order"]["probe"]
    result["samples"]["seed_order_restaurant_p95_ms"] = seed["restaurant_scoped"]["p95_ms"]
    result["probe"]["restaurant_scoped"]["seed_order_p95_ms"] = result["samples"]["seed_order_restaurant_p95_ms"]
    result["probe"]["point"]["seed_order_p95_ms"] = seed["point"]["p95_ms"]


def scaling(server: EphemeralPostgres, dbname: str, result: dict[str, Any], guard: Guard, options: Options,
            progress: Progress) -> list[dict[str, Any]]:
    """The main dataset's point and the swap at each smaller size, by rows."""
    points = [scaling_point(result["swap"], result["predictor"], result["dataset"], result["swap"]["online"])]
    for size in sorted(s for s in options.scaling if s != options.rows):
        progress(f"scaling point: {size:,} allocations")
        points.append(scaling_at(server, f"{dbname}_{size}", size, guard, options, progress))
    return sorted(points, key=lambda p: p["rows"])


def scaling_at(server: EphemeralPostgres, name: str, size: int, guard: Guard, options: Options,
               progress: Progress) -> dict[str, Any]:
    small_url = create_database(server, name)
    loaded = load(small_url, size, progress)
    small = swap_series(small_url, guard, replace(options, explore=False), progress, main=False)
    small_online = online.online_series(small_url, guard, replace(options, repeats=2), progress)
    small_swap = summarize_swap(small, loaded["counts"]["allocations"], guard.key)
    point = scaling_point(small_swap, predictor_summary(small, small_swap), loaded,
                          online.summarize_online(small_online, small_swap["floor_new_s"]))
    drop_database(server, name)
    return point
