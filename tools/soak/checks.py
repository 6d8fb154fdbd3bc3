"""The soak's invariants: what must hold in the database after the chain, whatever the interleaving.

Why a module of its own: these checks are the soak's verdict, and they must be
testable against a deliberately broken database without running workers or
Alembic (tests/tools/soak/test_checks.py breaks each one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from reserve.operations.monitor import OVERLAP_SCAN_LIMIT
from reserve.schema import guards


@dataclass
class Invariants:
    """What must hold after the chain, whatever the interleaving."""

    overlapping_pairs: int  # live allocations, same restaurant/resource, overlapping windows (monitor's query)
    missing_evidence: int  # confirmations the client saw succeed without their evidence row
    phantom_evidence: int  # evidence rows of this run beyond the confirmations that succeeded
    confirmed_without_allocation: int  # confirmed bookings (dataset's and the soak's) without a live allocation
    allocations_lost: int  # live allocations missing: before + confirmed - after, when positive
    allocations_extra: int  # live allocations nobody confirmed: after - before - confirmed, when positive

    def problems(self) -> list[str]:
        return [f"{name.replace('_', ' ')}: {value}" for name, value in asdict(self).items() if value]


def live_allocations(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM public.allocations WHERE NOT shadow").fetchone()[0]


def check_invariants(conn: psycopg.Connection[Any], confirmed: Sequence[tuple[str, str]], run_tag: str,
                     allocations_before: int) -> Invariants:
    """Check the database against what the clients saw (``confirmed``: (booking, key) that succeeded)."""
    bookings = [b for b, _ in confirmed]
    keys = [k for _, k in confirmed]
    missing = conn.execute(
        "SELECT count(*) FROM unnest(%s::uuid[], %s::text[]) AS c(booking_id, idempotency_key) "
        "WHERE NOT EXISTS (SELECT 1 FROM public.booking_confirmation_results r "
        "                  WHERE r.booking_id = c.booking_id AND r.idempotency_key = c.idempotency_key)",
        (bookings, keys),
    ).fetchone()[0]
    ours = conn.execute("SELECT count(*) FROM public.booking_confirmation_results WHERE starts_with(idempotency_key, %s)",
                        (f"soak-{run_tag}-",)).fetchone()[0]
    without_allocation = conn.execute(
        "SELECT count(*) FROM public.bookings b WHERE b.status = 'confirmed' AND NOT EXISTS "
        "(SELECT 1 FROM public.allocations a WHERE a.booking_id = b.id AND NOT a.shadow)"
    ).fetchone()[0]
    delta = live_allocations(conn) - allocations_before - len(confirmed)
    return Invariants(
        overlapping_pairs=len(guards.find_violations(conn, guards.NEW_GUARD, limit=OVERLAP_SCAN_LIMIT)),
        missing_evidence=missing,
        phantom_evidence=max(0, ours - (len(confirmed) - missing)),
        confirmed_without_allocation=without_allocation,
        allocations_lost=max(0, -delta),
        allocations_extra=max(0, delta),
    )
