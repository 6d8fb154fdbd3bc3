"""What a migration run reports as data, not prose: each ACCESS EXCLUSIVE hold and each lock attempt retried.

The steps log these as ordinary lines for the operator, and put the facts on
the log record (``event`` and its fields). In-process readers (the benchmark,
the rehearsal: reserve.rollout.lockwatch.reported_holds) collect the records;
a reader of an ``alembic`` subprocess (the soak) sets ``RESERVE_EVENTS_FILE``
in its environment, and env.py writes one JSON object per event to that file,
so nothing parses the human-readable lines back.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

EVENTS_ENV = "RESERVE_EVENTS_FILE"
HOLD, LOCK_RETRY = "hold", "lock_retry"


def hold(step: str, seconds: float, tables: str) -> dict[str, Any]:
    """The ``extra`` of a hold's log record: ACCESS EXCLUSIVE on ``tables`` for ``seconds``, lock granted to commit."""
    return {"event": HOLD, "ae_hold_s": seconds, "ae_step": step, "ae_tables": tables}


def lock_retry(tables: str, attempt: int, reason: str) -> dict[str, Any]:
    """The ``extra`` of a retried lock attempt's log record."""
    return {"event": LOCK_RETRY, "retry_tables": tables, "retry_attempt": attempt, "retry_reason": reason}


class JsonLines(logging.Handler):
    """Appends every event record to a file, one JSON object per line, flushed as it comes."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        kind = getattr(record, "event", None)
        if kind == HOLD:
            fields = {"step": record.ae_step, "seconds": record.ae_hold_s, "tables": record.ae_tables}
        elif kind == LOCK_RETRY:
            fields = {"tables": record.retry_tables, "attempt": record.retry_attempt, "reason": record.retry_reason}
        else:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"event": kind, **fields}) + "\n")


def write_from_env(logger: logging.Logger) -> None:
    """When ``RESERVE_EVENTS_FILE`` names a file, write this run's events to it (env.py, at the start of a run)."""
    path = os.environ.get(EVENTS_ENV)
    if path:
        logger.addHandler(JsonLines(Path(path)))
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def read(path: Path) -> list[dict[str, Any]]:
    """The events a run wrote, in order (none when it wrote no file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
