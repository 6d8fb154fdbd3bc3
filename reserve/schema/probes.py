"""The overlap probes the checklist ran by hand, shared by verify, rehearse, monitor and bench.

Both ask "what is already allocated here in this window?", the question the
guard answers on every write. They include ``NOT shadow`` so that the
guard's partial GiST index can serve them.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from reserve.stats import quantile

# One restaurant's tables that overlap a two-hour window.
RESTAURANT_SCOPED = """
SELECT id FROM public.allocations
WHERE restaurant_id = %(restaurant_id)s AND resource_type = 'table'
  AND "window" && tstzrange(%(start)s, %(start)s + interval '2 hours') AND NOT shadow
"""

# One resource's allocations that overlap a two-hour window.
POINT = """
SELECT id FROM public.allocations
WHERE resource_type = 'table' AND resource_id = %(resource_id)s
  AND "window" && tstzrange(%(start)s, %(start)s + interval '2 hours') AND NOT shadow
"""


def sample_parameters(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Parameters that hit real data: a busy restaurant, one of its tables, one of its windows."""
    row = conn.execute(
        "SELECT restaurant_id, resource_id, lower(\"window\") FROM public.allocations "
        "WHERE NOT shadow AND resource_type = 'table' ORDER BY id LIMIT 1"
    ).fetchone()
    if row is None:
        return {"restaurant_id": None, "resource_id": None, "start": None}
    return {"restaurant_id": row[0], "resource_id": row[1], "start": row[2]}


def plan(conn: psycopg.Connection[Any], probe: str, params: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of ``probe``; ids only, no row data."""
    return "\n".join(r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + probe, params))


def uses_index(plan_text: str, index: str) -> bool:
    """Does the plan read ``index`` (Index Scan, Index Only Scan or Bitmap Index Scan)?"""
    return re.search(rf"(Scan using|Bitmap Index Scan on) {re.escape(index)}\b", plan_text) is not None


def latency_ms(conn: psycopg.Connection[Any], probe: str, params: dict[str, Any], runs: int = 200) -> dict[str, float]:
    """p50/p95 of the probe's wall time from the client, after a warm-up run (a prepared statement)."""
    conn.execute(probe, params, prepare=True).fetchall()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(probe, params, prepare=True).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(quantile(samples, 0.50), 4), "p95_ms": round(quantile(samples, 0.95), 4), "runs": runs}
