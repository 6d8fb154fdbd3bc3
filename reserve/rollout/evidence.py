"""The rehearsal's evidence: its step records, and the summary files written from them.

``Step`` is the project's one record of a rollout step (the soak keeps its
steps in it too); ``summary`` makes summary.json, ``human_summary``
SUMMARY.md, ``render_traces`` locks.txt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reserve.report import table
from reserve.rollout import timeline
from reserve.rollout.standby import StandbyWatch
from reserve.schema import locktrace

ARTIFACTS = (
    "pre-migration-state.txt", "post-migration-state.txt", "db-diff.txt", "migration-output.log",
    "new-constraint.txt", "new-table.txt", "performance-test.txt", "tests.txt", "locks.txt", "access-before.txt",
    "access-after.txt", "access-diff.txt", "summary.json", "SUMMARY.md",
)


def held(seconds: float | None) -> str:
    """A hold as the bundle shows it: milliseconds resolve the online exchange, seconds the locked build."""
    return "" if seconds is None else f"{seconds:.3f}"


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    lock_hold_s: float | None = None  # the longest ACCESS EXCLUSIVE hold on allocations, polled or reported
    # The holds the online swap timed itself (lock granted to commit): shorter than one poll, often.
    reported_holds: list[dict[str, Any]] | None = None
    lock_retries: int | None = None  # lock attempts that timed out and were retried (the soak counts them)
    wal_bytes: int | None = None  # WAL the server wrote during the step (pg_current_wal_lsn before and after)
    # For a migration step: statements traced, the strongest lock per table, locks beyond the declaration.
    lock_trace: dict[str, Any] | None = None
    started_s: float = 0.0  # since the rehearsal's first step began
    # With a standby: what it saw during the step and until it had replayed the step's WAL
    # (reserve.rollout.standby.StandbyFigures).
    standby: dict[str, Any] | None = None


@dataclass
class Result:
    out: Path
    steps: list[Step] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def render(self, width: int | None = None) -> str:
        rows = [("ok" if step.ok else "FAIL", step.name, f"{step.seconds:.2f}",
                 held(step.lock_hold_s), step.detail) for step in self.steps]
        verdict = self.summary.get("verdict", "no-go")
        failed = self.summary.get("failed_step")
        return (table(("result", "step", "seconds", "ACCESS EXCLUSIVE held (s)", "detail"), rows, width=width)
                + f"verdict: {verdict.upper()}" + (f" (failed step: {failed})" if failed else "")
                + f"\nevidence: {self.out}")


def standby_line(seen: dict[str, Any]) -> str:
    """A step's standby figures in one line (console and SUMMARY.md)."""
    caught = f"caught up {seen['caught_up_after_s']:.2f}s after" if seen["caught_up"] else "NOT caught up"
    return (f"longest read {seen['longest_read_s']:.3f}s, lag peak {seen['replay_lag_peak_s']:.2f}s, {caught}, "
            f"{seen['cancelled_reads']} cancelled, {sum(seen['recovery_conflicts'].values())} conflicts")


def standby_summary(steps: list[Step], watch: StandbyWatch) -> dict[str, Any]:
    """The whole rehearsal as the standby saw it: its settings, and the worst of every step."""
    seen = [(s.name, s.standby) for s in steps if s.standby]

    def worst(key: str) -> tuple[str | None, Any]:
        return max(((name, f[key]) for name, f in seen if f[key] is not None), key=lambda p: p[1],
                   default=(None, None))

    longest_step, longest = worst("longest_read_s")
    lag_step, lag = worst("replay_lag_peak_s")
    return {
        "settings": watch.settings(),
        "reads": sum(f["reads"] for _, f in seen),
        "longest_read_s": longest, "longest_read_step": longest_step,
        "replay_lag_peak_s": lag, "replay_lag_peak_step": lag_step,
        "cancelled_reads": sum(f["cancelled_reads"] for _, f in seen),
        "recovery_conflicts": sum(sum(f["recovery_conflicts"].values()) for _, f in seen),
        "not_caught_up": [name for name, f in seen if not f["caught_up"]],
        "read": "one allocation by its id (reserve.rollout.standby.READ), one read after another on the standby: "
                "it takes the lock every read of allocations takes and costs well under a millisecond, so its "
                "duration is its wait",
    }


def trace_summary(trace: locktrace.LockTrace) -> dict[str, Any]:
    """A migration step's lock trace in summary.json: per revision, statements and the strongest lock per table."""
    return {
        "statements": trace.statement_count,
        "revisions": {step.step: {"statements": len(step.statements), "strongest": step.strongest(),
                                  "completed": step.completed} for step in trace.steps},
        "undeclared": trace.undeclared(),
    }


def render_traces(traces: dict[str, locktrace.LockTrace]) -> str:
    """locks.txt: the lock trace of every migration step, in the order they ran."""
    header = ("# The table locks the migrating session held after each statement (reserve.schema.locktrace),\n"
              "# checked against what each revision declares (reserve.schema.locks.DECLARED).\n\n")
    return header + "\n".join(f"## rehearsal step: {name}\n\n{trace.render()}" for name, trace in traces.items())


def summary(result: Result, facts: dict[str, Any], rows: int) -> dict[str, Any]:
    failed = next((s.name for s in result.steps if not s.ok), None)
    locks = {s.name: s.lock_hold_s for s in result.steps if s.lock_hold_s is not None}
    return {
        "verdict": "go" if failed is None and result.steps else "no-go",
        "failed_step": failed,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requested_rows": rows,
        "rows": facts.get("rows"),
        "steps": [asdict(s) for s in result.steps],
        "lock_hold_s": locks,
        "lock_trace_statements": sum((s.lock_trace or {}).get("statements", 0) for s in result.steps),
        "swap_method": facts.get("swap_method"),
        "standby": facts.get("standby"),
        "timeline": timeline.PLOT if facts.get("timeline") is None else None,
        "timeline_skipped": facts.get("timeline"),
        "predicted_lock_hold_s": (facts.get("preflight") or {}).get("facts", {}).get("predicted_lock_hold_s"),
        "predicted_background_s": (facts.get("preflight") or {}).get("facts", {}).get("predicted_background_s"),
        "probe_ms": facts.get("probe"),
        "qa": facts.get("qa"),
        "artifacts": [name for name in ARTIFACTS if (result.out / name).exists() or name in ("summary.json", "SUMMARY.md")],
    }


def standby_markdown(steps: list[Step], overall: dict[str, Any] | None) -> list[str]:
    """SUMMARY.md's section on the hot standby, when the rehearsal had one."""
    if not overall:
        return []
    settings = ", ".join(f"{k} = {v}" for k, v in sorted(overall["settings"].items()))
    lines = ["## What the hot standby saw", "",
             f"A streaming replica of the throw-away server ({settings}); the reader: {overall['read']}.", "",
             "| step | WAL (MB) | replay lag peak (s) | caught up after (s) | reads | longest read (s) | cancelled "
             "| recovery conflicts |", "|---|---|---|---|---|---|---|---|"]
    for step in steps:
        f = step.standby
        if not f:
            continue
        wal = "" if step.wal_bytes is None else f"{step.wal_bytes / 1e6:.1f}"
        caught = f"{f['caught_up_after_s']:.2f}" if f["caught_up"] else "**not caught up**"
        conflicts = ", ".join(f"{k[6:]} {v}" for k, v in f["recovery_conflicts"].items()) or "0"
        lines.append(f"| {step.name} | {wal} | {f['replay_lag_peak_s']:.2f} | {caught} | {f['reads']} | "
                     f"{f['longest_read_s']:.3f} | {f['cancelled_reads']} | {conflicts} |")
    lines += ["", f"Longest standby read: {overall['longest_read_s']} s (step `{overall['longest_read_step']}`); "
              f"peak replay lag {overall['replay_lag_peak_s']} s (step `{overall['replay_lag_peak_step']}`); "
              f"{overall['cancelled_reads']} reads cancelled, {overall['recovery_conflicts']} recovery conflicts. "
              "What to set on replicas: docs/OPERATIONS.md, section 9.", ""]
    return lines


def human_summary(result: Result) -> str:
    s = result.summary
    lines = [
        "# Rehearsal of the capacity-overlap rollout", "",
        f"**Verdict: {s['verdict'].upper()}**" + (f" — failed step: `{s['failed_step']}`" if s["failed_step"] else ""),
        "", f"Generated {s['generated_at']} on a throw-away database with {s['rows'] or s['requested_rows']} rows.", "",
        "| step | result | seconds | ACCESS EXCLUSIVE held (s) | WAL (MB) | detail |", "|---|---|---|---|---|---|",
    ]
    for step in result.steps:
        lock = held(step.lock_hold_s)
        wal = "" if step.wal_bytes is None else f"{step.wal_bytes / 1e6:.1f}"
        lines.append(f"| {step.name} | {'ok' if step.ok else 'FAIL'} | {step.seconds:.2f} | {lock} | {wal} | "
                     f"{step.detail} |")
    lines += ["", f"Swap method: {s['swap_method']}. Predicted lock hold of the swap (preflight): "
              f"{s['predicted_lock_hold_s']} s" + (f", background {s['predicted_background_s']} s"
                                                  if s.get("predicted_background_s") is not None else "") + ".",
              "Per-statement locks of every migration step: `locks.txt`.", "",
              *standby_markdown(result.steps, s.get("standby")),
              f"![timeline]({timeline.PLOT})" if s.get("timeline") else f"Timeline: {s.get('timeline_skipped')}.",
              "", "Files: " + ", ".join(f"`{a}`" for a in s["artifacts"]), ""]
    return "\n".join(lines)
