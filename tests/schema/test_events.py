"""reserve.schema.events: an ``alembic`` run reports its ACCESS EXCLUSIVE holds and its retried lock attempts as
data (RESERVE_EVENTS_FILE), which the soak reads instead of parsing the operator's lines back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from reserve.rollout import alembic_runner
from reserve.schema import events
from reserve.schema.swap import holds
from tests.support import Database, wait_until


def test_an_online_upgrade_writes_its_retried_lock_attempt_and_its_holds_to_the_events_file(pre_swap_db: Database,
                                                                                           tmp_path: Path):
    written = tmp_path / "events.jsonl"
    with pre_swap_db.connect() as writer:  # a write in flight: the build's SHARE ROW EXCLUSIVE waits for it
        writer.execute("LOCK TABLE allocations IN ROW EXCLUSIVE MODE")
        proc = alembic_runner.start_cli(pre_swap_db.url, "-x", "swap_method=online", "-x", "swap_lock_timeout=200ms",
                                        "-x", "swap_lock_attempts=20", "upgrade", "head",
                                        extra_env={events.EVENTS_ENV: str(written)})
        try:
            wait_until(lambda: any(e["event"] == events.LOCK_RETRY for e in events.read(written)),
                       "the build to give up one attempt", procs=[proc])
            writer.rollback()
            output, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 0, output
    found = events.read(written)
    retried = [e for e in found if e["event"] == events.LOCK_RETRY]
    assert retried[0]["tables"] == "public.allocations" and retried[0]["attempt"] == 1
    held = [e for e in found if e["event"] == events.HOLD]
    assert [e["step"] for e in held] == ["exchange"] and 0 < held[0]["seconds"] < 5
    assert "public.allocations" in held[0]["tables"]


def test_a_hold_is_a_line_for_the_operator_and_an_event_for_a_reader(tmp_path: Path, caplog):
    written = tmp_path / "events.jsonl"
    logger = logging.getLogger("reserve.schema.swap")
    handler = events.JsonLines(written)
    logger.addHandler(handler)
    try:
        caplog.set_level(logging.INFO, logger="reserve.schema.swap")
        holds.log_hold("test", "dropping the machinery", time.perf_counter() - 0.5, "public.bookings")
    finally:
        logger.removeHandler(handler)
    assert "dropping the machinery held ACCESS EXCLUSIVE on public.bookings for" in caplog.text
    (event,) = events.read(written)
    assert event["event"] == events.HOLD and event["tables"] == "public.bookings" and event["seconds"] >= 0.5
