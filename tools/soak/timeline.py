"""The soak's timeline: its phases, and the figures per phase cut from the workers' logs.

Why a module of its own: the phases are defined by when they end (the main
process notes each end), and every worker call must land in exactly one phase
for the per-phase figures to add up. That arithmetic is pure, so it lives apart
from the processes and the database and is tested on its own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tools.soak.workers import WorkerLog


@dataclass
class PhaseStats:
    name: str
    seconds: float
    confirmations: int
    rejected_overlaps: int
    retryable_errors: int
    unexpected_errors: int
    confirmations_per_s: float


def phase(name: str, seconds: float, ends: list[tuple[str, float]]) -> None:
    """A quiet phase: the workers run, nothing else happens."""
    time.sleep(seconds)
    ends.append((name, time.monotonic()))


def tile(ends: Sequence[tuple[str, float]], start: float) -> list[tuple[str, float, float]]:
    """Phases from their end times: each starts where the previous ended, so every call lands in one."""
    starts = [start, *(end for _, end in ends[:-1])]
    return [(name, t0, t1) for (name, t1), t0 in zip(ends, starts, strict=True)]


def phase_stats(name: str, t0: float, t1: float, calls: Sequence[tuple[float, float, str]]) -> PhaseStats:
    """Calls that completed in [t0, t1), by outcome."""
    outcomes = Counter(outcome for _, end, outcome in calls if t0 <= end < t1)
    seconds = max(t1 - t0, 1e-9)
    return PhaseStats(name, round(seconds, 3), outcomes["ok"], outcomes["rejected"], outcomes["retryable"],
                      outcomes["unexpected"], round(outcomes["ok"] / seconds, 1))


def longest_stall(logs: Sequence[WorkerLog], t_start: float, timeline: Sequence[tuple[str, float, float]]
                  ) -> tuple[float, str]:
    """The longest time any worker went without completing a call, and the phase in which it ended."""
    best, where = 0.0, ""
    for log in logs:
        previous = t_start
        for _, end, _ in sorted(log.calls, key=lambda c: c[1]):
            if end - previous > best:
                best = end - previous
                where = next((name for name, t0, t1 in timeline if t0 <= end < t1), "after the last phase")
                where = f"worker {log.index}, ended during '{where}'"
            previous = end
    return round(best, 3), where
