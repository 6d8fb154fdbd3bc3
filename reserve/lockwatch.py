"""How long ACCESS EXCLUSIVE on a table is really held, seen from the database.

A second connection polls pg_locks while a migration runs and records every
interval during which some backend held a granted AccessExclusiveLock on the
table. This is the figure that matters to users: how long their reads and
writes of allocations could not proceed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.engine import URL

from reserve import db

QUERY = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock' AND granted
  AND relation = to_regclass(%s) AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass
class LockWatch:
    url: URL
    table: str = "public.allocations"
    interval_s: float = 0.005
    holds: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def longest_s(self) -> float:
        return max(self.holds, default=0.0)

    def _poll(self) -> None:
        with db.connect(self.url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '100ms'")
            held_since: float | None = None
            self._ready.set()
            while not self._stop.is_set():
                held = conn.execute(QUERY, (self.table,)).fetchone()[0] > 0
                now = time.perf_counter()
                if held and held_since is None:
                    held_since = now
                elif not held and held_since is not None:
                    self.holds.append(now - held_since)
                    held_since = None
                time.sleep(self.interval_s)
            if held_since is not None:
                self.holds.append(time.perf_counter() - held_since)

    def __enter__(self) -> LockWatch:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
