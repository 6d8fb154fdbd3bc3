"""bench.benchmark and bench/: the instruments and the results document (no timing asserts here)."""

from __future__ import annotations

import json
import threading

import pytest

from bench import benchmark, render
from reserve.rollout import dataset
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import guards
from tests.support import Database


def test_the_shipped_floor_builds_exactly_the_shipped_guard():
    assert benchmark.constraint_sql(guards.NEW_GUARD.name, benchmark.shipped_key()) == guards.NEW_GUARD.add_sql()
    assert benchmark.SEED_KEY == ("restaurant_id", "resource_type", "resource_id", "window")


def test_the_benchmark_follows_the_key_order_that_ships(monkeypatch):
    reordered = guards.Guard(guards.NEW_GUARD.name, ("resource_id", "window", "restaurant_id", "resource_type"),
                             guards.NEW_GUARD.timing)
    assert reordered.key != guards.NEW_GUARD.key
    monkeypatch.setattr(guards, "NEW_GUARD", reordered)
    assert benchmark.shipped_key() == reordered.key
    build = benchmark.constraint_build("shipped", benchmark.shipped_key())
    assert 'resource_id WITH =, "window" WITH &&, restaurant_id WITH =, resource_type WITH =' in build.statements[0]


def test_bare_builds_of_other_keys_and_knobs_run_and_are_seen_from_the_database(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=4))  # 4,000 live rows: a build of a tenth of a second or more
    build = benchmark.constraint_build("ff", benchmark.SEED_KEY, with_params="fillfactor = 100",
                                       settings=("maintenance_work_mem = '128MB'",))
    assert ") WITH (fillfactor = 100) WHERE ((NOT shadow))" in build.statements[0]
    measured = benchmark.measure_build(head_db.url, build)
    assert measured["index_mb"] is not None and measured["wall_s"] is not None
    index = benchmark.measure_build(head_db.url, benchmark.index_build("idx", benchmark.shipped_key()))
    assert index["holds"] == 0  # CREATE INDEX takes SHARE, not ACCESS EXCLUSIVE
    with head_db.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'bench\\_%'").fetchone()[0]
    assert left == 0


def test_a_timed_statement_sees_the_lock_it_holds_from_the_database(head_db: Database):
    """The instrument, with a hold of known length (not a build's, which depends on the machine)."""
    held = benchmark.timed_statements(head_db.url, ("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE",
                                                    "SELECT pg_sleep(0.3)"))
    assert held.holds == 1 and 0.1 < held.lock_s <= held.wall_s + 0.05
    shared = benchmark.timed_statements(head_db.url, ("LOCK TABLE public.allocations IN SHARE MODE",
                                                      "SELECT pg_sleep(0.1)"))
    assert shared.holds == 0


def test_quantile_interpolates():
    assert benchmark.quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert benchmark.quantile([0.0, 10.0], 0.95) == pytest.approx(9.5)


def test_plan_summary_names_the_index_or_the_scan():
    assert benchmark.plan_summary("Index Scan using allocations_no_overlap on allocations  (cost=..)") == \
        "index allocations_no_overlap"
    assert benchmark.plan_summary("Bitmap Heap Scan on allocations\n  ->  Bitmap Index Scan on x_idx") == "bitmap x_idx"
    assert benchmark.plan_summary("Seq Scan on allocations  (cost=0.00..1.00)") == "seq scan"


def test_a_tiny_run_writes_every_key_of_the_results_document(pg_server, tmp_path):
    if not isinstance(pg_server, EphemeralPostgres):
        pytest.skip("pgbench and the CPU readings need the local throw-away server")
    options = benchmark.Options(rows=1200, repeats=1, explore=False, probe_runs=30, probe_budget_s=0.2,
                                confirm_rounds=1, confirm_seconds=0.2, confirm_clients=(1, 4, 8))
    messages: list[str] = []
    result = benchmark.run(options, messages.append, server=pg_server, dbname=f"bench_test_{threading.get_ident()}")
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
    assert result["predictor"]["predicted_s"] > 0 and result["predictor"]["actual_s"] == swap["upgrade_lock_s"]
    assert {"upgrade_lock_over_floor_new", "floor_new_over_seed_order", "predictor_error"} <= set(result["targets"])
    result["timestamp"] = "test"
    written = render.refresh_docs(result, tmp_path)
    doc = (tmp_path / "BENCHMARKS.md").read_text()
    assert render.BEGIN in doc and render.END in doc and "swap.upgrade_lock_s" in doc
    assert tmp_path / "BENCHMARKS.md" in written


def test_refreshing_the_docs_keeps_the_hand_written_text(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\nWhy we chose the key.\n\n{render.BEGIN}\nold numbers\n{render.END}\n\nMore prose.\n")
    result = {
        "rows": 10, "timestamp": "t", "elapsed_s": 60.0,
        "dataset": {"live_allocations": 9},
        "environment": {"server_version": "15", "cpus": 2, "loadavg_start": [1.0], "loadavg_end": [1.0]},
        "swap": {k: 1.0 for k in ("upgrade_lock_s", "downgrade_lock_s", "floor_new_s", "floor_old_s", "seed_order_s",
                                  "index_only_s", "upgrade_cpu_s", "downgrade_cpu_s", "floor_new_cpu_s",
                                  "floor_old_cpu_s", "seed_order_cpu_s", "index_only_cpu_s", "upgrade_command_s",
                                  "downgrade_command_s")} | {"shipped_key": "k", "seed_key": "s", "statistic": "min"},
        "predictor": {"predicted_s": 1.0, "actual_s": 1.0, "error_pct": 0.0, "elapsed_s": 0.1, "method": "m",
                      "downgrade": {"predicted_s": 1.0, "actual_s": 1.0, "error_pct": 0.0}},
        "targets": {"predictor_error": {"value": 0.0, "limit": "within +-25%", "met": True}},
    }
    render.refresh_docs(result, tmp_path)
    text = doc.read_text()
    assert "Why we chose the key." in text and "More prose." in text and "old numbers" not in text


def test_a_proposed_key_order_is_what_the_real_upgrade_builds_during_the_run(baseline_db: Database):
    proposed = ("resource_id", "window", "restaurant_id", "resource_type")
    shipped = guards.NEW_GUARD
    assert proposed != shipped.key
    with benchmark.proposed_key(proposed):
        assert benchmark.shipped_key() == proposed
        baseline_db.upgrade("head")
    assert guards.NEW_GUARD is shipped
    with baseline_db.connect() as conn:
        definition = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                  "WHERE conname = 'allocations_no_overlap'").fetchone()[0]
    assert 'resource_id WITH =, "window" WITH &&, restaurant_id WITH =, resource_type WITH =' in definition
    with pytest.raises(ValueError), benchmark.proposed_key(("restaurant_id", "window")):
        pass
