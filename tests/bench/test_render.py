"""bench.render: the generated part of docs/BENCHMARKS.md, between its markers."""

from __future__ import annotations

from bench import render


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
