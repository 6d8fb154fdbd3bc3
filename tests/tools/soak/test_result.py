"""The soak's result (tools.soak.result): the JSON keys ``--out`` writes, and the tables the terminal shows."""

from __future__ import annotations

import json

from reserve.rollout.evidence import Step
from tools.soak.checks import Invariants
from tools.soak.result import SoakResult
from tools.soak.timeline import PhaseStats

KEYS = ["workers", "rows", "phase_seconds", "duration_s", "attempts", "confirmations", "rejected_overlaps", "phases",
        "steps", "errors_by_sqlstate", "unexpected_errors", "longest_stall_s", "longest_stall_phase", "invariants",
        "final_revision", "catalog_drift", "problems", "ok"]


def _result(problems: list[str]) -> SoakResult:
    return SoakResult(
        workers=2, rows=3000, phase_seconds=2.0, duration_s=9.876, attempts=120, confirmations=100,
        rejected_overlaps=12,
        phases=[PhaseStats("before", 2.0, 60, 7, 0, 0, 30.0), PhaseStats("during upgrade head", 1.25, 40, 5, 1, 0, 32.0)],
        steps=[Step("upgrade head", True, 1.2, lock_hold_s=0.75, lock_retries=1),
               Step("downgrade -1", False, 3.4, detail="lock not granted within 2s", lock_hold_s=0.0, lock_retries=5)],
        errors_by_sqlstate={"23P01": 7, "P0001": 5, "55P03": 1}, unexpected_errors=[], longest_stall_s=1.5,
        longest_stall_phase="worker 1, ended during 'during upgrade head'", invariants=Invariants(0, 0, 0, 0, 0, 0),
        final_revision="0003c_maintenance_role", catalog_drift=[], problems=problems,
    )


def test_the_json_keeps_its_keys_and_each_step_the_fields_the_soak_fills():
    document = json.loads(_result(["step 'downgrade -1' failed: lock not granted within 2s"]).to_json())
    assert list(document) == KEYS and document["ok"] is False
    assert [set(step) for step in document["steps"]] == [{"name", "ok", "seconds", "detail", "lock_hold_s",
                                                          "lock_retries"}] * 2
    assert document["steps"][1] == {"name": "downgrade -1", "ok": False, "seconds": 3.4,
                                    "detail": "lock not granted within 2s", "lock_hold_s": 0.0, "lock_retries": 5}
    assert document["phases"][0] == {"name": "before", "seconds": 2.0, "confirmations": 60, "rejected_overlaps": 7,
                                     "retryable_errors": 0, "unexpected_errors": 0, "confirmations_per_s": 30.0}
    assert json.loads(_result([]).to_json())["ok"] is True


def test_the_rendering_shows_the_totals_a_table_of_phases_a_table_of_steps_and_the_verdict():
    text = _result(["step 'downgrade -1' failed: lock not granted within 2s"]).render()
    lines = text.splitlines()
    assert lines[0] == ("soak: 2 workers, 3000 allocation rows, 9.9s, 100 confirmations of 120 attempts, "
                        "12 overlaps rejected")
    phases = lines.index(next(line for line in lines if line.startswith("phase ")))
    assert lines[phases].split() == ["phase", "seconds", "confirmations", "per", "second", "overlaps", "rejected",
                                     "retryable", "unexpected"]
    assert lines[phases + 1].split() == ["before", "2.00", "60", "30.0", "7", "0", "0"]
    assert lines[phases + 2].split() == ["during", "upgrade", "head", "1.25", "40", "32.0", "5", "1", "0"]
    steps = phases + 3
    assert lines[steps].split()[:3] == ["result", "step", "seconds"]
    assert lines[steps + 1].split() == ["ok", "upgrade", "head", "1.20", "0.75", "1"]
    assert lines[steps + 2].split() == ["FAILED", "downgrade", "-1", "3.40", "0.00", "5", "lock", "not", "granted",
                                        "within", "2s"]
    # Columns line up: each value starts where its header does.
    assert lines[steps + 1].index("1.20") == lines[steps + 2].index("3.40") == lines[steps].index("seconds")
    assert "  errors by SQLSTATE: {'23P01': 7, 'P0001': 5, '55P03': 1}" in lines
    assert "  longest stall: 1.50s (worker 1, ended during 'during upgrade head')" in lines
    assert "  final revision: 0003c_maintenance_role" in lines
    assert lines[-1] == "verdict: FAILED: step 'downgrade -1' failed: lock not granted within 2s"
    assert _result([]).render().splitlines()[-1] == "verdict: OK"
