"""The soak's figures and verdict: what ``--out`` writes as JSON and what the terminal shows.

Why a module of its own: the result is the soak's contract with whoever reads
``artifacts/soak.json`` (its keys stay put) and with the operator at the
terminal (the phases and the steps as tables, through ``reserve.report.table``
like every other command's), separate from how the figures were obtained.
The steps are the project's one step record, ``reserve.rollout.evidence.Step``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from reserve.report import table
from reserve.rollout.evidence import Step
from tools.soak.checks import Invariants
from tools.soak.timeline import PhaseStats

PHASE_COLUMNS = ("phase", "seconds", "confirmations", "per second", "overlaps rejected", "retryable", "unexpected")
STEP_COLUMNS = ("result", "step", "seconds", "ACCESS EXCLUSIVE held (s)", "lock retries", "detail")


@dataclass
class SoakResult:
    """The soak's figures and verdict; ``as_dict`` gives its JSON."""

    workers: int
    rows: int
    phase_seconds: float
    duration_s: float
    attempts: int
    confirmations: int
    rejected_overlaps: int
    phases: list[PhaseStats]
    steps: list[Step]
    errors_by_sqlstate: dict[str, int]
    unexpected_errors: list[str]
    longest_stall_s: float
    longest_stall_phase: str
    invariants: Invariants
    final_revision: str | None
    catalog_drift: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        for step in document["steps"]:
            for unused in ("lock_trace", "reported_holds", "wal_bytes", "started_s", "standby"):  # the rehearsal's only
                del step[unused]
        return {**document, "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def render(self, width: int | None = None) -> str:
        """The totals, a table of the phases, a table of the steps, the errors, the invariants, the verdict."""
        phases = [(p.name, f"{p.seconds:.2f}", p.confirmations, f"{p.confirmations_per_s:.1f}", p.rejected_overlaps,
                   p.retryable_errors, p.unexpected_errors) for p in self.phases]
        steps = [("ok" if s.ok else "FAILED", s.name, f"{s.seconds:.2f}",
                  "" if s.lock_hold_s is None else f"{s.lock_hold_s:.2f}",
                  "" if s.lock_retries is None else s.lock_retries, s.detail) for s in self.steps]
        lines = [f"soak: {self.workers} workers, {self.rows} allocation rows, {self.duration_s:.1f}s, "
                 f"{self.confirmations} confirmations of {self.attempts} attempts, "
                 f"{self.rejected_overlaps} overlaps rejected",
                 table(PHASE_COLUMNS, phases, width=width).rstrip("\n"),
                 table(STEP_COLUMNS, steps, width=width).rstrip("\n"),
                 f"  errors by SQLSTATE: {self.errors_by_sqlstate or 'none'}",
                 f"  longest stall: {self.longest_stall_s:.2f}s ({self.longest_stall_phase})",
                 f"  invariants: {asdict(self.invariants)}",
                 f"  final revision: {self.final_revision}",
                 "verdict: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems))]
        return "\n".join(lines)
