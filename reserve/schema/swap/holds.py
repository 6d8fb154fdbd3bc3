"""How long a step of the online swap held ACCESS EXCLUSIVE: logged by the step, parsed back by its readers.

The exchange and the teardown log one line per hold (from the lock granted to
the commit); the benchmark, the rehearsal and the soak read those lines, since
a poll of pg_locks can miss a hold of milliseconds.
"""

from __future__ import annotations

import logging
import re
import time

from reserve.schema.swap.state import LIVE

log = logging.getLogger("reserve.schema.swap")

# The line log_hold writes, for a reader of an Alembic run's output (the soak runs it as a subprocess).
HOLD_LINE = re.compile(r"held ACCESS EXCLUSIVE on (?P<tables>.+?) for (?P<ms>[\d.]+) ms \(lock granted to commit\)")


def read_from_output(lines: list[str], table: str = LIVE) -> list[float]:
    """Seconds of each hold covering ``table`` that an Alembic run's output reports."""
    return [float(m["ms"]) / 1000 for m in map(HOLD_LINE.search, lines) if m and table in m["tables"]]


def log_hold(action: str, step: str, locked: float, tables: str = LIVE) -> None:
    """How long the step held ACCESS EXCLUSIVE on ``tables``, from the moment the lock was granted to the commit,
    seen from the client (so an upper bound); carried on the record as ``ae_hold_s`` (with ``ae_tables``) for the
    benchmark and the rehearsal."""
    held = time.perf_counter() - locked
    log.info("%s: %s held ACCESS EXCLUSIVE on %s for %.1f ms (lock granted to commit)", action, step, tables,
             held * 1000, extra={"ae_hold_s": held, "ae_step": step, "ae_tables": tables})
