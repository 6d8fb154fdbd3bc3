"""What a soak worker process does: a client of the booking service creating and confirming holds.

Why a module of its own: this is the code that runs in the ``spawn``-ed
worker processes, so it stays small in what it imports, and everything it
needs travels in a picklable ``WorkerPlan``. It also decides which errors a
client may see during the swap (``classify``), which the checks rely on.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from reserve import db
from reserve.schema import guards

# Errors a client is expected to see while the guard is swapped, and to retry.
RETRYABLE = {
    "55P03": "lock_not_available",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "57014": "query_canceled",
}
GUARD_NAMES = frozenset({guards.OLD_GUARD.name, guards.NEW_GUARD.name})
APPLICATION_NAME = "reserve-soak"

HOLD_SQL = """
WITH booking AS (
  INSERT INTO public.bookings (restaurant_id, status, party_size, start_at, end_at)
  VALUES (%(restaurant)s, 'pending', 2, %(start)s, %(end)s) RETURNING id
), hold AS (
  INSERT INTO public.table_holds (restaurant_id, zone_id, booking_id, start_at, end_at, expires_at, metadata)
  SELECT %(restaurant)s, %(zone)s, id, %(start)s, %(end)s, now() + interval '10 minutes', '{"policyVersion": "soak"}'
  FROM booking RETURNING id, booking_id
), member AS (
  INSERT INTO public.table_hold_members (hold_id, table_id) SELECT id, %(table)s FROM hold
)
SELECT id, booking_id FROM hold"""
CONFIRM_SQL = (
    "SELECT count(*) FROM public.confirm_hold_assignment_tx(p_hold_id => %s, p_booking_id => %s, "
    "p_idempotency_key => %s, p_target_status => 'confirmed')"
)
RELEASE_SQL = "DELETE FROM public.table_holds WHERE id = %s"


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker process needs; picklable, and the password stays out of its repr."""

    index: int
    workers: int
    tables: list[tuple[str, str, str]]  # (restaurant_id, zone_id, table_id)
    day0: datetime  # midnight of the dataset's day 0: its allocations are on days 1..50, 18:00-20:00
    overlap_every: int
    max_calls: int
    deadline: float  # time.monotonic() after which a worker stops whatever happens
    statement_timeout: str
    run_tag: str
    url: str = field(repr=False)  # the database URL with its password: ``render_url``, ``database_url``

    @staticmethod
    def render_url(url: URL) -> str:
        """``url`` as a string a plan carries and ``database_url`` parses back, password included: never print it."""
        return url.render_as_string(hide_password=False)

    def database_url(self) -> URL:
        return make_url(self.url)

    def item(self, j: int) -> tuple[bool, tuple[str, str, str], datetime, datetime]:
        """The j-th hold of this worker: (overlaps an existing allocation?, table, start, end).

        Ordinary holds get a (table, day >= 60) slot no other item uses, so they
        can only fail for a retryable reason; one in ``overlap_every`` sits on
        19:00-21:00 of a dataset day, across the generated 18:00-20:00 allocation
        of that table, so it must be rejected by whichever guard is installed.
        """
        n = j * self.workers + self.index
        table = self.tables[n % len(self.tables)]
        overlap = self.overlap_every > 0 and j % self.overlap_every == self.overlap_every - 1
        if overlap:
            start = self.day0 + timedelta(days=1 + (n // len(self.tables)) % 49, hours=19)
        else:
            start = self.day0 + timedelta(days=60 + n // len(self.tables), hours=12)
        return overlap, table, start, start + timedelta(hours=2)


def classify(exc: psycopg.Error, overlap_item: bool) -> str:
    """'rejected' (the expected overlap rejection), 'retryable', or 'unexpected'.

    The overlap rejection counts as expected only on a deliberately overlapping
    item: on any other it means a guard rejected a booking it should have accepted.
    The new guard raises it inside the call (P0001 'allocations_no_overlap', from
    assign_tables_atomic_v2); the old one at commit (23P01 on its constraint).
    """
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    overlap_error = (
        (state == "23P01" and diag is not None and diag.constraint_name in GUARD_NAMES)
        or (state == "P0001" and diag is not None and diag.message_primary == guards.NEW_GUARD.name)
    )
    if overlap_error:
        return "rejected" if overlap_item else "unexpected"
    return "retryable" if state in RETRYABLE else "unexpected"


@dataclass
class WorkerLog:
    """What one worker saw: (started, ended, outcome) per call, its successes, its errors."""

    index: int
    calls: list[tuple[float, float, str]] = field(default_factory=list)  # outcome: ok/rejected/retryable/unexpected
    confirmed: list[tuple[str, str]] = field(default_factory=list)  # (booking_id, idempotency key)
    overlap_accepted: list[str] = field(default_factory=list)  # bookings confirmed across an existing allocation
    errors: Counter[str] = field(default_factory=Counter)  # SQLSTATE (or exception type) -> count
    unexpected: list[str] = field(default_factory=list)  # first few, for the report
    fatal: str | None = None


def _error_text(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    return f"{state}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def _connect(plan: WorkerPlan) -> psycopg.Connection[Any]:
    # A worker plays a client, not a tool: libpq's own PGOPTIONS, not the tools' lock_timeout (a client
    # waits behind the swap's lock for as long as it is held, and the longest stall measures that wait).
    url = plan.database_url()
    conn = db.connect(url, autocommit=True, application_name=APPLICATION_NAME, options=os.environ.get("PGOPTIONS", ""))
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (plan.statement_timeout,))
    return conn


def worker_main(plan: WorkerPlan, start: Any, stop: Any, results: Any) -> None:
    """A client of the booking service: create a hold, confirm it, again, until told to stop.

    Bounded by ``plan.max_calls`` and ``plan.deadline`` as well as by ``stop``, so
    a soak can never run away. Always puts its log on ``results``.
    """
    log = WorkerLog(plan.index)
    conn: psycopg.Connection[Any] | None = None
    try:
        try:
            conn = _connect(plan)
        except BaseException:
            start.abort()  # the main process stops waiting for this worker
            raise
        start.wait(timeout=120)
        for j in range(plan.max_calls):
            if stop.is_set() or time.monotonic() > plan.deadline:
                break
            if conn.closed:
                conn = _connect(plan)
            overlap, (restaurant, zone, table), begin, end = plan.item(j)
            key = f"soak-{plan.run_tag}-{plan.index}-{j}"
            started = time.monotonic()
            hold = booking = None
            try:
                hold, booking = conn.execute(HOLD_SQL, {"restaurant": restaurant, "zone": zone, "table": table,
                                                        "start": begin, "end": end}).fetchone()
                conn.execute(CONFIRM_SQL, (hold, booking, key)).fetchone()
            except psycopg.Error as exc:
                outcome = classify(exc, overlap)
                log.errors[getattr(exc, "sqlstate", None) or type(exc).__name__] += 1
                if outcome == "unexpected" and len(log.unexpected) < 10:
                    log.unexpected.append(_error_text(exc))
                if hold is not None and not conn.closed:
                    try:  # the client lets the hold go; if even that fails, it expires in 10 minutes
                        conn.execute(RELEASE_SQL, (hold,))
                    except psycopg.Error:
                        pass
            else:
                outcome = "ok"
                log.confirmed.append((str(booking), key))
                if overlap:
                    log.overlap_accepted.append(str(booking))
            log.calls.append((started, time.monotonic(), outcome))
    except BaseException as exc:  # reported, never swallowed: the soak fails on it
        log.fatal = _error_text(exc)
    finally:
        if conn is not None:
            conn.close()
        results.put(log)
