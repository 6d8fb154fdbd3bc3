"""How long a step of the online swap held ACCESS EXCLUSIVE: a line for the operator, an event for its readers.

The exchange and the teardown report one hold per step (from the lock granted
to the commit, seen from the client: an upper bound); the benchmark, the
rehearsal and the soak read the event (reserve.schema.events), since a poll of
pg_locks can miss a hold of milliseconds.
"""

from __future__ import annotations

import logging
import time

from reserve.schema import events
from reserve.schema.swap.state import LIVE

log = logging.getLogger("reserve.schema.swap")


def log_hold(action: str, step: str, locked: float, tables: str = LIVE) -> None:
    """How long the step held ACCESS EXCLUSIVE on ``tables``, from the moment the lock was granted to the commit."""
    held = time.perf_counter() - locked
    log.info("%s: %s held ACCESS EXCLUSIVE on %s for %.1f ms (lock granted to commit)", action, step, tables,
             held * 1000, extra=events.hold(step, held, tables))
