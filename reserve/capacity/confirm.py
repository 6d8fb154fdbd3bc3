"""The Python client of ``confirm_hold_assignment_tx``: tenant context, adjacency mode, typed errors, cache.

``confirm_hold(conn, hold_id, booking_id, idempotency_key, restaurant_id=…)``, in one transaction
(its own on an idle or autocommit connection; a savepoint inside the caller's
open transaction, after which the caller's tenant context is put back):

1. sets the tenant context with ``set_restaurant_context`` (transaction-local,
   so a pooled connection never carries it to another client);
2. looks up the evidence of ``(booking_id, idempotency_key)`` in
   ``booking_confirmation_results``: found, it is the answer (a cache hit: the
   hold was consumed by the first call, so a second call could only fail);
3. otherwise (a miss) resolves the venue's adjacency mode (reserve.capacity.flags)
   and checks the hold's tables against it, then calls the function, whose
   errors become the typed exceptions below, and reads back the evidence it wrote;
4. records the hit or miss in ``confirmation_cache_events`` in that same
   transaction, so the hit rate is a SQL query and a rolled-back confirmation
   counts nothing.

Every call's latency goes to the Prometheus histogram
``reserve_confirm_duration_seconds{outcome="hit|miss|error"}``; errors are also
counted by kind in ``reserve_confirm_errors_total{error=…}``. Both live in the
default registry of prometheus_client, which the application exposes (or
``reserve.operations.monitor.start_exporter`` does, in-process).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from prometheus_client import Counter, Histogram
from psycopg.types.json import Jsonb

from reserve.capacity import adjacency, flags

# ---------------------------------------------------------------- errors


class ConfirmError(Exception):
    """A confirmation that did not happen. ``sqlstate`` is the database's code, None for a client-side refusal."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class HoldNotFound(ConfirmError):
    """P0002: no such hold (already consumed, or never made)."""


class BookingNotFound(ConfirmError):
    """P0002: no such booking."""


class HoldExpired(ConfirmError):
    """P0001: the hold's expires_at has passed."""


class HoldBelongsToAnotherBooking(ConfirmError):
    """P0001: the hold is bound to a different booking."""


class HoldHasNoTables(ConfirmError):
    """P0001: the hold has no member tables."""


class TablesHeldElsewhere(ConfirmError):
    """P0001: another live hold covers one of these tables in this window."""


class OverlapRejected(ConfirmError):
    """P0001 'allocations_no_overlap' (or 23P01 from a guard checked at commit): a table is already taken."""


class PolicyChanged(ConfirmError):
    """P0003: the policy version or adjacency snapshot changed since the hold was made."""


class IdempotencyConflict(ConfirmError):
    """The idempotency key was already used for another hold or another table set (P0003)."""


class TenantMismatch(ConfirmError):
    """42501: the hold or booking belongs to another restaurant than the one given."""


class AdjacencyRejected(ConfirmError):
    """The hold's tables do not satisfy the venue's adjacency mode (checked before calling), or 22023 'not adjacent'."""


class InvalidRequest(ConfirmError):
    """22023 / 22000: bad arguments (window bounds, inactive, fixed or unzoned tables, …)."""


# (SQLSTATE, pattern in the message or None for any, exception), first match wins.
_MAPPING: list[tuple[str, str | None, type[ConfirmError]]] = [
    ("P0002", r"^Hold ", HoldNotFound),
    ("P0002", r"^Booking ", BookingNotFound),
    ("P0002", None, InvalidRequest),
    ("P0001", r"allocations_no_overlap", OverlapRejected),
    ("P0001", r"bound to another booking", HoldBelongsToAnotherBooking),
    ("P0001", r"has expired", HoldExpired),
    ("P0001", r"has no tables", HoldHasNoTables),
    ("P0001", r"held by another live hold", TablesHeldElsewhere),
    ("P0003", r"^Idempotency key", IdempotencyConflict),
    ("P0003", None, PolicyChanged),
    ("23P01", None, OverlapRejected),
    ("42501", None, TenantMismatch),
    ("22023", r"not adjacent", AdjacencyRejected),
    ("22023", None, InvalidRequest),
    ("22000", None, InvalidRequest),
]
ERRORS: tuple[type[ConfirmError], ...] = (
    HoldNotFound, BookingNotFound, HoldExpired, HoldBelongsToAnotherBooking, HoldHasNoTables, TablesHeldElsewhere,
    OverlapRejected, PolicyChanged, IdempotencyConflict, TenantMismatch, AdjacencyRejected, InvalidRequest, ConfirmError,
)


def map_error(exc: psycopg.Error) -> ConfirmError:
    """The typed exception for a database error raised by a confirmation."""
    sqlstate = exc.sqlstate or ""
    message = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    for state, pattern, kind in _MAPPING:
        if sqlstate == state and (pattern is None or re.search(pattern, message)):
            return kind(message, sqlstate)
    return ConfirmError(f"confirmation failed ({sqlstate or 'no SQLSTATE'}): {message}", sqlstate or None)


# ---------------------------------------------------------------- metrics

OUTCOMES = ("hit", "miss", "error")
CONFIRM_SECONDS = Histogram(
    "reserve_confirm_duration_seconds",
    "Latency of reserve.capacity.confirm_hold, by outcome (hit: served from stored evidence, miss: confirmed, error).",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CONFIRM_ERRORS = Counter(
    "reserve_confirm_errors", "Failed confirm_hold calls, by typed error.", ["error"],
)
for _outcome in OUTCOMES:
    CONFIRM_SECONDS.labels(_outcome)
for _kind in ERRORS:
    CONFIRM_ERRORS.labels(_kind.__name__)

# ---------------------------------------------------------------- the client


@dataclass(frozen=True)
class Assignment:
    assignment_id: uuid.UUID
    table_id: uuid.UUID
    start_at: datetime
    end_at: datetime
    merge_group_id: uuid.UUID | None


@dataclass(frozen=True)
class Confirmation:
    """The evidence of a confirmation; ``assignments`` are the rows the function returned (empty on a cache hit)."""

    booking_id: uuid.UUID
    hold_id: uuid.UUID
    restaurant_id: uuid.UUID
    idempotency_key: str
    table_ids: tuple[uuid.UUID, ...]
    window_start: datetime
    window_end: datetime
    actor_id: uuid.UUID | None
    metadata: dict[str, Any]
    checked_at: datetime
    from_cache: bool
    assignments: tuple[Assignment, ...] = field(default=())


_EVIDENCE = (
    "SELECT hold_id, restaurant_id, table_ids, lower(assignment_window), upper(assignment_window), actor_id, "
    "metadata, checked_at FROM public.booking_confirmation_results WHERE booking_id = %s AND idempotency_key = %s"
)
_CALL = (
    "SELECT assignment_id, table_id, start_at, end_at, merge_group_id FROM public.confirm_hold_assignment_tx("
    "p_hold_id => %(hold)s, p_booking_id => %(booking)s, p_idempotency_key => %(key)s, "
    "p_require_adjacency => %(adjacency)s, p_assigned_by => %(actor)s, p_window_start => %(start)s, "
    "p_window_end => %(end)s, p_expected_policy_version => %(policy)s, p_expected_adjacency_hash => %(hash)s, "
    "p_target_status => %(status)s::public.booking_status, p_history_reason => %(reason)s, "
    "p_history_metadata => %(history)s, p_history_changed_by => %(changed_by)s)"
)


def _evidence(conn: psycopg.Connection[Any], booking_id: uuid.UUID, key: str, *, from_cache: bool,
              assignments: tuple[Assignment, ...] = ()) -> Confirmation | None:
    row = conn.execute(_EVIDENCE, (booking_id, key)).fetchone()
    if row is None:
        return None
    hold, restaurant, tables, start, end, actor, metadata, checked_at = row
    return Confirmation(booking_id, hold, restaurant, key, tuple(tables), start, end, actor, metadata, checked_at,
                        from_cache, assignments)


def _record(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID, booking_id: uuid.UUID, key: str,
            outcome: str) -> None:
    conn.execute(
        "INSERT INTO public.confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome) "
        "VALUES (%s, %s, %s, %s)",
        (restaurant_id, booking_id, key, outcome),
    )


def _check_adjacency(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID, hold_id: uuid.UUID,
                     env: Mapping[str, str] | None) -> None:
    tables = [row[0] for row in conn.execute(
        "SELECT table_id FROM public.table_hold_members WHERE hold_id = %s ORDER BY table_id", (hold_id,))]
    if len(tables) < 2:
        return  # one table satisfies every mode; a missing or empty hold is the function's to report
    mode = flags.resolve(conn, restaurant_id, flags.ADJACENCY_MODE.key, env, context_set=True).value
    edges = conn.execute(
        "SELECT table_a, table_b FROM public.table_adjacencies WHERE table_a = ANY (%s) AND table_b = ANY (%s)",
        (tables, tables),
    ).fetchall()
    reason = adjacency.explain(mode, tables, edges)
    if reason is not None:
        raise AdjacencyRejected(f"hold {hold_id} breaks adjacency mode {mode!r}: {reason}")


def _confirm(conn: psycopg.Connection[Any], hold_id: uuid.UUID, booking_id: uuid.UUID, key: str,
             restaurant_id: uuid.UUID, params: dict[str, Any], env: Mapping[str, str] | None) -> Confirmation:
    conn.execute("SELECT public.set_restaurant_context(%s)", (restaurant_id,))
    stored = _evidence(conn, booking_id, key, from_cache=True)
    if stored is not None:
        if stored.restaurant_id != restaurant_id:
            raise TenantMismatch(f"booking {booking_id} belongs to another restaurant")
        if stored.hold_id != hold_id:
            raise IdempotencyConflict(
                f"idempotency key {key!r} of booking {booking_id} already confirmed hold {stored.hold_id}, not {hold_id}")
        _record(conn, restaurant_id, booking_id, key, "hit")
        return stored
    if params["adjacency"]:
        _check_adjacency(conn, restaurant_id, hold_id, env)
    rows = conn.execute(_CALL, {**params, "hold": hold_id, "booking": booking_id, "key": key}).fetchall()
    assignments = tuple(Assignment(*row) for row in rows)
    confirmed = _evidence(conn, booking_id, key, from_cache=False, assignments=assignments)
    if confirmed is None:  # confirm_hold_assignment_tx before v12 writes no evidence
        raise ConfirmError("confirm_hold_assignment_tx wrote no evidence: the database is older than 0003_confirm_v12")
    _record(conn, restaurant_id, booking_id, key, "miss")
    return confirmed


def confirm_hold(
    conn: psycopg.Connection[Any],
    hold_id: uuid.UUID,
    booking_id: uuid.UUID,
    idempotency_key: str,
    *,
    restaurant_id: uuid.UUID,
    require_adjacency: bool = True,
    assigned_by: uuid.UUID | None = None,
    window: tuple[datetime, datetime] | None = None,
    expected_policy_version: str | None = None,
    expected_adjacency_hash: str | None = None,
    target_status: str | None = None,
    history_reason: str = "auto_assign_confirm",
    history_metadata: dict[str, Any] | None = None,
    history_changed_by: uuid.UUID | None = None,
    env: Mapping[str, str] | None = None,
) -> Confirmation:
    """Confirm ``hold_id`` for ``booking_id`` under ``idempotency_key``, or return the stored evidence of an
    earlier confirmation with that key. Raises a ConfirmError subclass; nothing is written then.

    ``require_adjacency``: a multi-table hold must satisfy the venue's adjacency mode (checked here) and
    ``p_require_adjacency`` is passed, so the database checks the weakest mode under its own locks.
    ``env``: where FEATURE_ALLOCATOR_ADJACENCY_MODE is read (default os.environ).
    """
    if not idempotency_key:
        raise ValueError("an idempotency key is required: it is what makes a replay safe")
    params = {
        "adjacency": require_adjacency, "actor": assigned_by,
        "start": window[0] if window else None, "end": window[1] if window else None,
        "policy": expected_policy_version, "hash": expected_adjacency_hash, "status": target_status,
        "reason": history_reason, "history": Jsonb(history_metadata or {}), "changed_by": history_changed_by,
    }
    started = time.perf_counter()
    outer = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    try:
        with conn.transaction():
            previous = conn.execute("SELECT current_setting('app.restaurant_id', true)").fetchone()[0] if outer else None
            result = _confirm(conn, hold_id, booking_id, idempotency_key, restaurant_id, params, env)
            if outer:
                conn.execute("SELECT set_config('app.restaurant_id', COALESCE(%s, ''), true)", (previous,))
    except psycopg.Error as exc:
        if exc.sqlstate is None or exc.sqlstate.startswith("08"):  # the connection itself failed
            _observe(started, "error", "ConnectionError")
            raise
        error = map_error(exc)
        _observe(started, "error", type(error).__name__)
        raise error from exc
    except (ConfirmError, flags.FlagError) as exc:
        _observe(started, "error", type(exc).__name__)
        raise
    _observe(started, "hit" if result.from_cache else "miss")
    return result


def _observe(started: float, outcome: str, error: str | None = None) -> None:
    CONFIRM_SECONDS.labels(outcome).observe(time.perf_counter() - started)
    if error is not None:
        CONFIRM_ERRORS.labels(error).inc()
