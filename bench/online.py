"""The online swap measured, beside the locked one in the same run.

From 0003, ``repeats`` times: the real ``alembic upgrade head`` by the online
method (its ACCESS EXCLUSIVE hold as the swap itself times it, from the lock
granted to the commit, and as ``reserve.rollout.lockwatch`` sees it; its
background wall time against the locked method's floor build), then, inside
the window it opens, ``alembic downgrade -1`` (the exchange back: hold and
wall). The first repetition instead measures what the open window costs a
confirm (pgbench, the capture trigger enabled and disabled in interleaved
rounds), closes the window with ``reserve swap finish`` and measures the
rollback that rebuilds the old guard's table online. Last, one upgrade and
one window rollback with ``WRITERS`` clients updating allocations
throughout (the hold then covers the tail of the log replayed under the lock).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from bench.confirm import HoldPool, Pgbench, calibrate, rounds, summarize_runs
from bench.instruments import Progress, connect, r3, timed_migration
from bench.options import Options
from bench.swap import LOCKED
from reserve.operations import swap_window
from reserve.rollout import alembic_runner
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.rollout.lockwatch import reported_holds
from reserve.schema.guards import Guard
from reserve.schema.swap.state import CAPTURE_TRIGGER

ONLINE = ["swap_method=online"]
WRITERS = 4


@dataclass
class Writers:
    """What the writer threads did: committed updates, and the longest one took (a stall the swap caused)."""

    writes: int = 0
    longest_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float) -> None:
        with self.lock:
            self.writes += 1
            self.longest_s = max(self.longest_s, seconds)


@contextmanager
def writing(url: URL, clients: int = WRITERS) -> Iterator[Writers]:
    """``clients`` sessions updating random allocations, one autocommit UPDATE at a time, until the block ends:
    every one of them is a write the capture logs and the exchange must carry."""
    with connect(url) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM public.allocations TABLESAMPLE SYSTEM (5) LIMIT 20000")]
        ids = ids or [row[0] for row in conn.execute("SELECT id FROM public.allocations LIMIT 20000")]  # a small table
    done, out = threading.Event(), Writers()

    def write(seed: int) -> None:
        pick = random.Random(seed)
        try:
            with connect(url) as conn:
                while not done.is_set():
                    started = time.perf_counter()
                    conn.execute("UPDATE public.allocations SET updated_at = clock_timestamp() WHERE id = %s",
                                 (pick.choice(ids),))
                    out.record(time.perf_counter() - started)
        except Exception as exc:  # recorded, so that a run with a failed writer is not read as a quiet one
            out.errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    started = time.monotonic()  # every writer under way before the measured runs start
    while out.writes < clients and not out.errors and time.monotonic() - started < 30:
        time.sleep(0.01)
    try:
        yield out
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)


def timed_online(url: URL, action: Callable[[], None]) -> dict[str, Any]:
    """One online run: wall, the holds it reported (the longest is the headline), and lockwatch's view."""
    with reported_holds() as reported:
        sample = timed_migration(url, action)
    return {"wall_s": r3(sample.wall_s), "lock_s": r3(reported.longest_s),
            "bookings_lock_s": r3(reported.longest_on("public.bookings")), "holds": reported.as_list(),
            "lockwatch_total_s": r3(sample.lock_s), "lockwatch_holds": sample.holds}


def upgrade(url: URL, guard: Guard) -> dict[str, Any]:
    return timed_online(url, lambda: alembic_runner.upgrade(url, "head", ONLINE, new_guard=guard))


def downgrade(url: URL, guard: Guard) -> dict[str, Any]:
    return timed_online(url, lambda: alembic_runner.downgrade(url, "-1", ONLINE, new_guard=guard))


def online_series(url: URL, guard: Guard, options: Options, progress: Progress, *,
                  pgbench: Pgbench | None = None) -> dict[str, Any]:
    """From head by the locked method (after bench/swap.py's series, on the heap its floors were built on) to
    head with the window closed: online upgrades, window rollbacks, one rebuild rollback (and, given
    ``pgbench``, the window's cost to a confirm).

    The first upgrade's background is the one compared with the floor: it copies the heap the floors were
    built on (later ones copy a copy, which keeps the physical order, but not every detail of the layout)."""
    alembic_runner.downgrade(url, "-1", LOCKED, new_guard=guard)
    out: dict[str, Any] = {"upgrade": [], "window_downgrade": [], "rebuild_downgrade": []}
    for rep in range(max(options.repeats, 2)):
        up = upgrade(url, guard)
        out["upgrade"].append(up)
        progress(f"online rep {rep + 1}: upgrade head: lock {up['lock_s'] * 1000:.1f} ms, wall {up['wall_s']:.1f}s")
        if rep == 0:
            if pgbench is not None:
                out["capture_overhead"] = capture_overhead(pgbench, options, progress)
            swap_window.finish(url)
            down = downgrade(url, guard)
            out["rebuild_downgrade"].append(down)
            progress(f"online rep 1: downgrade -1 after swap finish (rebuild): lock {down['lock_s'] * 1000:.1f} ms, "
                     f"wall {down['wall_s']:.1f}s")
            swap_window.finish(url)  # a rollback that could not drop what it replaced left it retired
        else:
            down = downgrade(url, guard)
            out["window_downgrade"].append(down)
            progress(f"online rep {rep + 1}: downgrade -1 in the window: lock {down['lock_s'] * 1000:.1f} ms, "
                     f"wall {down['wall_s']:.2f}s")
    with writing(url) as writers:
        up, down = upgrade(url, guard), downgrade(url, guard)
    out["under_writers"] = {"clients": WRITERS, "upgrade": up, "window_downgrade": down, "writes": writers.writes,
                            "longest_write_s": r3(writers.longest_s), "errors": writers.errors[:5]}
    progress(f"online with {WRITERS} writers: upgrade lock {up['lock_s'] * 1000:.1f} ms, window rollback lock "
             f"{down['lock_s'] * 1000:.1f} ms (wall {down['wall_s']:.2f}s), {writers.writes} writes, longest "
             f"{writers.longest_s:.3f}s")
    up = upgrade(url, guard)
    out["upgrade"].append(up)
    progress(f"final online upgrade head: lock {up['lock_s'] * 1000:.1f} ms, wall {up['wall_s']:.1f}s")
    swap_window.finish(url)  # head as the locked method leaves it, for what runs next
    return out


def set_capture(url: URL, enabled: bool) -> None:
    """Benchmark only: the capture's row trigger on (ENABLE ALWAYS, as installed) or off (off, the previous table
    falls out of step, so the window is closed after these rounds)."""
    with connect(url) as conn:
        conn.execute(f"ALTER TABLE public.allocations {'ENABLE ALWAYS' if enabled else 'DISABLE'} TRIGGER "
                     f"{CAPTURE_TRIGGER}")


def capture_overhead(bench: Pgbench, options: Options, progress: Progress) -> dict[str, Any]:
    """Confirm latency and throughput with the window's capture trigger and without it, interleaved rounds at 1 and 4
    clients, the same confirm version (v12) at head."""
    pool = HoldPool(bench.url)
    pool.setup()
    per_client = calibrate(bench, pool, options, progress)
    clients = tuple(c for c in options.confirm_clients if c <= 4) or options.confirm_clients[:1]
    states = {"capture": lambda: set_capture(bench.url, True), "no_capture": lambda: set_capture(bench.url, False)}
    try:
        runs = rounds(bench, pool, per_client, clients, options.confirm_rounds, states, progress)
    finally:
        set_capture(bench.url, True)
    out = summarize_runs(runs, "no_capture", "capture", clients)
    out["method"] = (f"pgbench -M prepared, one v12 confirm per transaction, {options.confirm_rounds} interleaved "
                     "rounds with the window's capture trigger enabled and disabled, per client count")
    return out


def pgbench_for(server: EphemeralPostgres | None, dbname: str) -> Pgbench | None:
    return None if server is None else Pgbench(server, dbname, Path(tempfile.mkdtemp(prefix="reserve-bench-")))


def discard(pgbench: Pgbench | None) -> None:
    if pgbench is not None:
        shutil.rmtree(pgbench.workdir, ignore_errors=True)


def summarize_online(series: dict[str, Any], locked_floor_new_s: float | None) -> dict[str, Any]:
    """The headline figures: the least disturbed sample of each (min), and the background against the floor."""
    def least(samples: list[dict[str, Any]], key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return min(values) if values else None

    background = series["upgrade"][0]["wall_s"]  # from the heap the floors were built on
    out = {
        "upgrade_lock_s": least(series["upgrade"], "lock_s"),
        "upgrade_lock_max_s": max((s["lock_s"] for s in series["upgrade"]), default=None),
        "upgrade_wall_s": background,
        "upgrade_wall_min_s": least(series["upgrade"], "wall_s"),
        "background_over_floor_new": None if not locked_floor_new_s or background is None
        else round(background / locked_floor_new_s, 3),
        "window_downgrade_lock_s": least(series["window_downgrade"], "lock_s"),
        "window_downgrade_wall_s": least(series["window_downgrade"], "wall_s"),
        "rebuild_downgrade_lock_s": least(series["rebuild_downgrade"], "lock_s"),
        "rebuild_downgrade_wall_s": least(series["rebuild_downgrade"], "wall_s"),
        "bookings_lock_max_s": max((s["bookings_lock_s"] for kind in ("upgrade", "window_downgrade", "rebuild_downgrade")
                                    for s in series[kind]), default=None),
        "statistic": f"min of {len(series['upgrade'])} online upgrades, {len(series['window_downgrade'])} window "
                     f"rollbacks, {len(series['rebuild_downgrade'])} rebuild rollback; holds on allocations as the "
                     "swap times them (lock granted to commit, from the client); background: the first upgrade, "
                     "from the heap the floors were built on",
    }
    out["downgrade_lock_s"] = max(v for v in (out["window_downgrade_lock_s"], out["rebuild_downgrade_lock_s"], 0.0)
                                  if v is not None)
    if "capture_overhead" in series:
        out["capture_overhead"] = series["capture_overhead"]
    writers = series.get("under_writers")
    if writers:
        out["under_writers"] = {"clients": writers["clients"], "upgrade_lock_s": writers["upgrade"]["lock_s"],
                                "window_downgrade_lock_s": writers["window_downgrade"]["lock_s"],
                                "window_downgrade_wall_s": writers["window_downgrade"]["wall_s"],
                                "writes": writers["writes"], "longest_write_s": writers["longest_write_s"],
                                "errors": writers["errors"]}
    return out
