"""bench.suite: a whole (tiny) run, and the results document it returns (no timing asserts here)."""

from __future__ import annotations

import json
import threading

import pytest

from bench import render, suite
from bench.options import Options
from reserve.rollout.ephemeral import EphemeralPostgres

pytestmark = pytest.mark.slow  # `make test-slow`: a tiny benchmark run, pgbench included


def test_a_tiny_run_writes_every_key_of_the_results_document(pg_server, tmp_path):
    if not isinstance(pg_server, EphemeralPostgres):
        pytest.skip("pgbench and the CPU readings need the local throw-away server")
    options = Options(rows=1200, repeats=1, explore=False, probe_runs=30, probe_budget_s=0.2,
                      confirm_rounds=1, confirm_seconds=0.2, confirm_clients=(1, 4, 8))
    messages: list[str] = []
    result = suite.run(options, messages.append, server=pg_server, dbname=f"bench_test_{threading.get_ident()}")
    json.dumps(result)  # serializable as written to bench/results
    swap = result["swap"]
    for key in ("upgrade_lock_s", "downgrade_lock_s", "floor_new_s", "floor_old_s", "seed_order_s", "index_only_s"):
        assert isinstance(swap[key], float), key  # measured, whatever its size at 1,200 rows
    for probe in ("restaurant_scoped", "point"):
        for key in ("before_p50_ms", "before_p95_ms", "after_p50_ms", "after_p95_ms"):
            assert result["probe"][probe][key] > 0
    for version in ("v11", "v12"):
        assert set(result["confirm"][version]["tps"]) == {"1", "4", "8"}
        assert set(result["confirm"][version]["p95_ms"]) == {"1", "4", "8"}
    assert result["confirm"]["evidence_rows"] > 0  # v12 wrote its evidence, v11 none
    online = swap["online"]
    assert 0 < online["upgrade_lock_s"] < online["upgrade_wall_s"]  # the hold the swap reported, inside the run
    assert online["window_downgrade_lock_s"] > 0 and online["rebuild_downgrade_lock_s"] > 0
    assert set(online["capture_overhead"]["p95_ratio"]) == {"1", "4"}  # the window's cost, up to 4 clients
    writers = online["under_writers"]
    assert writers["writes"] > 0 and writers["errors"] == []  # 4 clients wrote through an upgrade and a rollback
    assert 0 < writers["upgrade_lock_s"] and 0 < writers["window_downgrade_lock_s"] < writers["window_downgrade_wall_s"]
    steps = [h["step"] for h in result["samples_online"]["upgrade"][0]["holds"]]
    assert steps == ["exchange"], steps  # the online upgrade takes ACCESS EXCLUSIVE once
    assert {"online_upgrade_lock_s", "online_downgrade_lock_s", "window_rollback_wall_s",
            "capture_confirm_p95_ratio", "online_lock_s_under_writers",
            "window_rollback_wall_s_under_writers"} <= set(result["targets"])
    assert result["predictor"]["predicted_s"] > 0 and result["predictor"]["actual_s"] == swap["upgrade_lock_s"]
    assert {"upgrade_lock_over_floor_new", "floor_new_over_seed_order", "predictor_error"} <= set(result["targets"])
    result["timestamp"] = "test"
    written = render.refresh_docs(result, tmp_path)
    doc = (tmp_path / "BENCHMARKS.md").read_text()
    assert render.BEGIN in doc and render.END in doc and "swap.upgrade_lock_s" in doc and "swap.online.upgrade_lock_s" in doc
    assert "swap.online.under_writers" in doc
    assert tmp_path / "BENCHMARKS.md" in written
