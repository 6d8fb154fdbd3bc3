"""The checklist's overlap probes, timed from the client, and which index each one used.

Kept apart from the builds because the probes are measured at several points
of a run (before the swap, after it, on each floor) with one budget.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from bench.instruments import connect
from bench.options import Options
from reserve.schema import probes


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


def sample_parameters(url: URL) -> dict[str, Any]:
    """The probes' parameters, taken once from the data so every measurement asks the same question."""
    with connect(url) as conn:
        return probes.sample_parameters(conn)


def measure_probes(url: URL, params: dict[str, Any], options: Options) -> dict[str, Any]:
    with connect(url) as conn:
        return {"restaurant_scoped": probe_latency(conn, probes.RESTAURANT_SCOPED, params, options),
                "point": probe_latency(conn, probes.POINT, params, options)}
