"""The measuring instruments: every timed figure of the benchmark is a Sample taken here.

One place decides how a build or a migration is timed (from the client, from
the database through ``reserve.rollout.lockwatch``, and the lock holder's CPU
from /proc), so that the swap, its floors and the exploration are measured
the same way and can be compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.rollout.lockwatch import LockWatch, proc_cpu_s

# How often the monitor connection polls pg_locks: the resolution of every lock hold.
POLL_S = 0.010

Progress = Callable[[str], None]


def connect(url: URL) -> psycopg.Connection[Any]:
    """The benchmark's connections: the project's one way to connect, autocommit, named "bench"."""
    return db.connect(url, autocommit=True, application_name="bench")


def r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def checkpoint(url: URL) -> None:
    """Start every timed build from the same state: no dirty buffers, a fresh WAL segment budget."""
    with connect(url) as conn:
        conn.execute("CHECKPOINT")


@dataclass
class Sample:
    """One timed operation: wall time, the DB-side ACCESS EXCLUSIVE hold, and the holder's CPU."""

    wall_s: float
    lock_s: float
    cpu_s: float | None
    holds: int

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": r3(self.wall_s), "lock_s": r3(self.lock_s),
                "cpu_s": None if self.cpu_s is None else r3(self.cpu_s), "holds": self.holds}


def timed_migration(url: URL, action: Callable[[], None]) -> Sample:
    """Time ``action`` (an Alembic run in this process) as the database sees its locks."""
    checkpoint(url)
    with LockWatch(url, interval_s=POLL_S) as monitor:
        started = time.perf_counter()
        action()
        wall = time.perf_counter() - started
    return Sample(wall, monitor.total_s, monitor.cpu_s, len(monitor.holds))


def timed_statements(url: URL, statements: Sequence[str], settings: Sequence[str] = ()) -> Sample:
    """Run ``statements`` in one transaction (after ``SET LOCAL`` of ``settings``), timed from both sides."""
    checkpoint(url)
    with connect(url) as conn, LockWatch(url, interval_s=POLL_S) as monitor:
        pid = conn.info.backend_pid
        cpu0 = proc_cpu_s(pid)
        started = time.perf_counter()
        with conn.transaction():
            for setting in settings:
                conn.execute(f"SET LOCAL {setting}")
            for statement in statements:
                conn.execute(statement)
        wall = time.perf_counter() - started
        cpu1 = proc_cpu_s(pid)
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Sample(wall, monitor.total_s, cpu, len(monitor.holds))
