"""The soak's timeline (tools.soak.timeline): phases tile the run, figures per phase, the longest stall."""

from __future__ import annotations

from tools.soak.timeline import PhaseStats, longest_stall, phase_stats, tile
from tools.soak.workers import WorkerLog


def test_phases_tile_the_run_from_their_end_times():
    ends = [("before", 10.0), ("during upgrade head", 12.5), ("after upgrade head", 22.5)]
    assert tile(ends, 0.0) == [("before", 0.0, 10.0), ("during upgrade head", 10.0, 12.5),
                               ("after upgrade head", 12.5, 22.5)]


def test_a_phase_counts_the_calls_that_ended_in_it_by_outcome():
    calls = [(0.0, 1.0, "ok"), (1.0, 2.0, "ok"), (2.0, 3.0, "rejected"), (3.0, 3.5, "retryable"),
             (3.5, 3.9, "unexpected"), (3.9, 4.0, "ok")]  # the last ends at the phase's end: the next one's
    assert phase_stats("before", 0.0, 4.0, calls) == PhaseStats("before", 4.0, 2, 1, 1, 1, 0.5)


def test_the_longest_stall_names_its_worker_and_the_phase_in_which_it_ended():
    timeline = [("before", 0.0, 10.0), ("during downgrade -1", 10.0, 14.0)]
    quick = WorkerLog(0, calls=[(0.0, 1.0, "ok"), (1.0, 2.0, "ok"), (2.0, 3.0, "ok")])
    stuck = WorkerLog(1, calls=[(0.0, 9.0, "ok"), (9.0, 13.5, "ok")])
    assert longest_stall([quick, stuck], 0.0, timeline) == (9.0, "worker 1, ended during 'before'")
    assert longest_stall([quick, stuck], 8.5, timeline) == (4.5, "worker 1, ended during 'during downgrade -1'")
    assert longest_stall([WorkerLog(2)], 0.0, timeline) == (0.0, "")
