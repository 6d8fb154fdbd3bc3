"""Where an online swap stands: the names of its machinery and the one-row state it keeps.

The swap keeps everything in the schema ``reserve_swap`` (reserve/sql/schema/
swap_machinery.sql), so that a rerun can resume from what is recorded there
and `reserve verify` can say exactly what is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alembic.util import CommandError

SCHEMA = "reserve_swap"
LIVE = "public.allocations"
STANDBY = "reserve_swap.allocations"
LOG = "reserve_swap.log"
CONFLICTS = "reserve_swap.conflicts"
STATE = "reserve_swap.state"
EXCHANGE_SCHEMA = "reserve_swap_exchange"
CAPTURE_TRIGGER = "reserve_swap_capture"
CAPTURE_TRUNCATE_TRIGGER = "reserve_swap_capture_truncate"
REPLAY_LOCK = "reserve_swap.replay"  # the advisory lock (hashtext of this) one replayer or bulk copy holds

BUILDING, BACKFILLED, SWAPPED, WINDOW, RETIRED = "building", "backfilled", "swapped", "window", "retired"


@dataclass(frozen=True)
class SwapState:
    """The state row of a swap in flight (or of an open window)."""

    direction: str  # what the exchange does: 'upgrade' or 'downgrade'
    standby_guard: str
    phase: str
    backfill_end_page: int | None  # None: the backfill has not started
    rows_copied: int
    started_at: datetime
    copied_at: datetime | None
    backfilled_at: datetime | None
    swapped_at: datetime | None
    window_opened_at: datetime | None
    retired_at: datetime | None
    conflicts: int

    @property
    def exchanged(self) -> bool:
        """The standby and the live table have traded places (the guard in force is the new one)."""
        return self.phase in (SWAPPED, WINDOW, RETIRED)


def exists(session: Any) -> bool:
    return session.execute("SELECT to_regclass(%s) IS NOT NULL", (STATE,)).fetchone()[0]


def read(session: Any) -> SwapState | None:
    """The swap in flight, or None when there is none."""
    if not exists(session):
        return None
    row = session.execute(
        "SELECT direction, standby_guard, phase, backfill_end_page, rows_copied, started_at, copied_at, backfilled_at, "
        "swapped_at, window_opened_at, retired_at, (SELECT count(*) FROM reserve_swap.conflicts) FROM reserve_swap.state"
    ).fetchone()
    return SwapState(*row) if row else None


def conflicts(session: Any, limit: int = 20) -> list[tuple[str, str, str]]:
    """(allocation id, SQLSTATE, detail) of the rows the standby could not take, oldest first."""
    return [tuple(row) for row in session.execute(
        "SELECT allocation_id::text, sqlstate, detail FROM reserve_swap.conflicts ORDER BY recorded_at, allocation_id "
        "LIMIT %s", (limit,)).fetchall()]


def refuse_other_revisions(session: Any, action: str) -> None:
    """While a swap of allocations is in flight, no other revision may run: the database is between states
    that only the swap's own revision knows how to finish (or `reserve swap abort` undoes)."""
    found = read(session)
    if found is None:
        return
    if found.phase == RETIRED:
        raise CommandError(
            f"{action}: the table the rollback of allocations replaced is still in {STANDBY} (emptied; its foreign "
            "keys need a brief ACCESS EXCLUSIVE on bookings and restaurants to drop): run `reserve swap finish` "
            "when nothing holds them, then this again. Nothing was changed.")
    if found.phase == WINDOW:
        raise CommandError(
            f"{action}: the online swap's window is open (since {found.window_opened_at:%Y-%m-%d %H:%M} UTC), but "
            "alembic_version does not name the swap's revision: finish the swap first with `alembic upgrade head`")
    raise CommandError(
        f"{action}: an online {found.direction} of allocations is in flight (phase: {found.phase}); nothing was "
        f"changed. Finish it by rerunning `alembic {found.direction} {'head' if found.direction == 'upgrade' else '-1'}`"
        + (", or drop it with `reserve swap abort`" if not found.exchanged else ""))
