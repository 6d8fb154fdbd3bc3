"""The rehearsal as a picture: ``timeline.png``, each step's span, its ACCESS EXCLUSIVE hold and its WAL, and
(with a standby) the replica's replay lag over the same seconds.

matplotlib is an optional extra (``pip install -e '.[bench]'``): without it
the rehearsal still succeeds and its summary says that the plot was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT = "timeline.png"


def plot(steps: list[dict[str, Any]], path: Path, lag: list[tuple[float, float]] | None = None) -> str | None:
    """Write the timeline (``lag``: (seconds since the first step began, replay lag in seconds) samples of the
    standby); None when it was written, else why not (the summary says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no timeline.png"
    if not steps:
        return "no steps ran: no timeline.png"
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(steps) + 1.5), dpi=100)
    end = 0.0
    for row, step in enumerate(steps):
        start = step.get("started_s", end)
        color = "tab:blue" if step["ok"] else "tab:red"
        ax.broken_barh([(start, max(step["seconds"], 0.001))], (row - 0.35, 0.7), color=color, alpha=0.5)
        hold = step.get("lock_hold_s") or 0.0
        if hold:
            ax.broken_barh([(start + step["seconds"] - hold, max(hold, 0.001))], (row - 0.35, 0.7), color="black")
        label = f"{step['seconds']:.2f}s"
        if hold:
            label += f", ACCESS EXCLUSIVE {hold * 1000:.0f} ms" if hold < 1 else f", ACCESS EXCLUSIVE {hold:.2f}s"
        if step.get("wal_bytes"):
            label += f", WAL {step['wal_bytes'] / 1e6:.1f} MB"
        ax.text(start + step["seconds"], row, "  " + label, va="center", fontsize=7)
        end = max(end, start + step["seconds"])
    ax.set_yticks(range(len(steps)), [s["name"] for s in steps], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the rehearsal began (black: ACCESS EXCLUSIVE on allocations, at the step's end)")
    ax.set_xlim(0, end * 1.35)
    if lag:
        replica = ax.twinx()
        replica.plot([t for t, _ in lag], [s for _, s in lag], color="tab:orange", linewidth=1)
        replica.set_ylabel("standby replay lag (s)", color="tab:orange")
        replica.set_ylim(bottom=0)
    ax.set_title("Rehearsal timeline" + (" (orange: the hot standby's replay lag)" if lag else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
