"""How long ACCESS EXCLUSIVE on a table is really held, seen from the database.

A second connection polls pg_locks while a migration runs and records every
interval during which some backend held a granted AccessExclusiveLock on the
table. This is the figure that matters to users: how long their reads and
writes of allocations could not proceed. The rehearsal, the soak and the
benchmarks all measure the lock with this one instrument.

Each hold also records its holder and, when the server runs on this machine
(the throw-away ones do), the holder's CPU time over the hold, read from
/proc: a figure that does not depend on what else the machine is doing.

A hold shorter than the polling interval (the online swap's exchange, a few
milliseconds) can slip between two polls: the swap also times its own holds
(from the lock granted to the commit) and reports them on its log records;
``reported_holds`` collects them, and every instrument shows the longer of
the two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

from reserve import db

QUERY = """
SELECT pid FROM pg_locks
WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock' AND granted
  AND relation = to_regclass(%s) AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a local process (a backend of our own server), or None."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Hold:
    """One ACCESS EXCLUSIVE hold: who held it, for how long, and its CPU time (None when not local)."""

    pid: int
    seconds: float
    cpu_s: float | None


@dataclass
class LockWatch:
    """Poll every ``interval_s`` (the resolution of each hold); use as a context manager."""

    url: URL
    table: str = "public.allocations"
    interval_s: float = 0.005
    holds: list[Hold] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def longest_s(self) -> float:
        return max((h.seconds for h in self.holds), default=0.0)

    @property
    def total_s(self) -> float:
        return sum(h.seconds for h in self.holds)

    @property
    def cpu_s(self) -> float | None:
        """The holders' CPU time over all holds; None when any of it could not be read."""
        values = [h.cpu_s for h in self.holds]
        return None if not values or None in values else sum(values)  # type: ignore[arg-type]

    def _poll(self) -> None:
        try:
            with db.connect(self.url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '100ms'")
                since: float | None = None
                pid = cpu_start = cpu_last = None
                self._ready.set()
                while not self._stop.is_set():
                    row = conn.execute(QUERY, (self.table,)).fetchone()
                    now = time.perf_counter()
                    if row and since is None:
                        since, pid = now, row[0]
                        cpu_start = cpu_last = proc_cpu_s(pid)
                    elif row:
                        cpu_last = proc_cpu_s(pid) or cpu_last
                    elif since is not None:
                        self._record(pid, now - since, cpu_start, cpu_last)
                        since = None
                    time.sleep(self.interval_s)
                if since is not None:
                    self._record(pid, time.perf_counter() - since, cpu_start, proc_cpu_s(pid) or cpu_last)
        except BaseException as exc:  # raised again by __enter__ or __exit__, in the caller's thread
            self.error = exc
            self._ready.set()

    def _record(self, pid: int | None, seconds: float, cpu_start: float | None, cpu_end: float | None) -> None:
        cpu = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
        self.holds.append(Hold(pid or 0, seconds, cpu))

    def __enter__(self) -> LockWatch:
        self._thread = threading.Thread(target=self._poll, name="lock-watch", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.error:
            raise self.error


class ReportedHolds(logging.Handler):
    """The ACCESS EXCLUSIVE holds the swap reports (``ae_hold_s`` on its log records), in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.holds: list[tuple[str, float, str]] = []  # (step, seconds, the tables it held)

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "ae_hold_s"):
            self.holds.append((getattr(record, "ae_step", "?"), record.ae_hold_s, getattr(record, "ae_tables", "")))

    def longest_on(self, table: str = "public.allocations") -> float:
        """The longest reported hold that covered ``table``."""
        return max((seconds for _, seconds, tables in self.holds if table in tables), default=0.0)

    @property
    def longest_s(self) -> float:
        return self.longest_on()

    def as_list(self) -> list[dict[str, float | str]]:
        return [{"step": step, "seconds": round(seconds, 4), "tables": tables} for step, seconds, tables in self.holds]


@contextmanager
def reported_holds() -> Iterator[ReportedHolds]:
    """Collect the holds the online swap reports while an Alembic run in this process goes on."""
    logger = logging.getLogger("reserve.schema.swap")
    handler, level = ReportedHolds(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
