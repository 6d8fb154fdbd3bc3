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
SHADOW = "reserve_swap.allocations"
LOG = "reserve_swap.log"
CONFLICTS = "reserve_swap.conflicts"
STATE = "reserve_swap.state"
# The foreign keys an exchange re-pointed NOT VALID that were valid before it: the ones settle validates.
KEYS_TO_VALIDATE = "reserve_swap.keys_to_validate"
EXCHANGE_SCHEMA = "reserve_swap_exchange"
CAPTURE_TRIGGER = "reserve_swap_capture"
CAPTURE_TRUNCATE_TRIGGER = "reserve_swap_capture_truncate"
REPLAY_LOCK = "reserve_swap.replay"  # the advisory lock (hashtext of this) one replayer or bulk copy holds

BUILDING, BACKFILLED, SWAPPED, WINDOW = "building", "backfilled", "swapped", "window"
DETACHED, RETIRED = "detached", "retired"


@dataclass(frozen=True)
class Phase:
    """One phase of an online swap: what it means, what `reserve verify` says of it, and the timestamp column
    set when the swap enters it."""

    name: str
    meaning: str
    verify_says: str
    stamp: str | None


# Every phase, once. The state row exists from BUILDING until the machinery is dropped (no row: no swap).
PHASES: dict[str, Phase] = {phase.name: phase for phase in (
    Phase(BUILDING, "the shadow and the capture exist; the backfill copies rows, builds the key and the guard",
          "an online swap is building its shadow: rerun the same alembic command, or `reserve swap abort`", None),
    Phase(BACKFILLED, "the shadow is filled, guarded and validated; the exchange is next",
          "an online swap is ready to exchange: rerun the same alembic command, or `reserve swap abort`",
          "backfilled_at"),
    Phase(SWAPPED, "the tables have traded places; the re-pointed foreign keys are being validated",
          "the exchange is done: rerun the same alembic command to validate and settle", "swapped_at"),
    Phase(WINDOW, "after an upgrade: the previous table is kept in step, the rollback is an exchange back",
          "the window is open: `alembic downgrade -1` is instant, `reserve swap finish` closes it",
          "window_opened_at"),
    Phase(DETACHED, "the window is closed: the capture is gone, the previous table is out of step and is dropped next",
          "an interrupted `reserve swap finish` left the previous table: `reserve swap finish` drops it",
          "retired_at"),
    Phase(RETIRED, "after a rollback: the table that left, emptied or being emptied, is dropped next",
          "a rollback left the table it replaced: `reserve swap finish` drops it", "retired_at"),
)}

# Who may move the swap from where to where (reserve.schema.swap.online, .exchange, .teardown).
TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    (BUILDING, BACKFILLED),  # the backfill (alembic)
    (BACKFILLED, SWAPPED),  # the exchange (alembic)
    (WINDOW, SWAPPED),  # the exchange back inside the window (alembic downgrade -1)
    (SWAPPED, WINDOW),  # settled after an upgrade (alembic)
    (SWAPPED, RETIRED),  # settled after a downgrade (alembic)
    (WINDOW, DETACHED),  # the window closed (reserve swap finish)
})
# Where the machinery may be dropped from (the state row goes with it): before the exchange (reserve swap abort)
# and after the table that left is out of use (reserve swap finish, or the next alembic run).
DROPPABLE = {"abort": (BUILDING, BACKFILLED), "drop": (DETACHED, RETIRED)}
# The columns a transition may set besides the phase and its stamp.
_SETTABLE = ("direction", "standby_guard")


class StateMoved(CommandError):
    """The swap is not in the phase a step was about to move it from (another run moved it): nothing was changed."""


def advance(session: Any, from_phase: str, to_phase: str, **values: str) -> None:
    """Move the swap from ``from_phase`` to ``to_phase`` in the caller's transaction, after its locks are granted:
    a compare-and-set (exactly one row in ``from_phase``), else StateMoved naming the phase found. ``values``
    sets direction or standby_guard; the new phase's timestamp is stamped."""
    if (from_phase, to_phase) not in TRANSITIONS:
        raise ValueError(f"no transition from {from_phase} to {to_phase}")
    unknown = set(values) - set(_SETTABLE)
    if unknown:
        raise ValueError(f"a transition cannot set {', '.join(sorted(unknown))}")
    stamp = PHASES[to_phase].stamp
    sets = ["phase = %s", *(f"{column} = %s" for column in values), *([f"{stamp} = now()"] if stamp else [])]
    if to_phase == SWAPPED:  # the exchange fills the table that becomes the shadow, as far as old snapshots go
        sets.append("filled_xid = pg_current_xact_id()")
    moved = session.execute(f"UPDATE {STATE} SET {', '.join(sets)} WHERE phase = %s RETURNING 1",
                            (to_phase, *values.values(), from_phase)).fetchone()
    if moved is None:
        raise StateMoved(f"the online swap was to move from {from_phase} to {to_phase}, but it is "
                         f"{_phase_now(session)} (another run moved it); nothing was changed")


def expect(session: Any, allowed: tuple[str, ...], *, doing: str) -> str:
    """The phase, locked for the rest of the caller's transaction (no other run can move it meanwhile), when it is
    one of ``allowed``; else StateMoved naming it."""
    row = session.execute(f"SELECT phase FROM {STATE} FOR UPDATE").fetchone() if exists(session) else None
    if row is None or row[0] not in allowed:
        raise StateMoved(f"{doing}: the online swap is {row[0] if row else 'gone'}, not {' or '.join(allowed)} "
                         "(another run moved it); nothing was changed")
    return row[0]


def _phase_now(session: Any) -> str:
    row = session.execute(f"SELECT phase FROM {STATE}").fetchone() if exists(session) else None
    return f"{row[0]}" if row else "gone (its machinery dropped)"


def phase_check_sql() -> list[str]:
    """The state table's CHECK on phase, listing every phase: for machinery an older release built (a window
    stays open for days, across deploys) whose CHECK lacks a phase this release moves to."""
    listed = ", ".join(f"'{name}'" for name in PHASES)
    return [f"ALTER TABLE {STATE} DROP CONSTRAINT state_phase_check",
            f"ALTER TABLE {STATE} ADD CONSTRAINT state_phase_check CHECK (phase IN ({listed}))"]


def ensure_phase_check(session: Any) -> None:
    """Bring an older machinery's CHECK on phase up to this release's phases (a no-op when it lists them all)."""
    (definition,) = session.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = "
                                    "'state_phase_check' AND conrelid = %s::regclass", (STATE,)).fetchone()
    if any(f"'{name}'" not in definition for name in PHASES):
        for statement in phase_check_sql():
            session.execute(statement)


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
        """The shadow and the live table have traded places (the guard in force is the new one)."""
        return self.phase in (SWAPPED, WINDOW, DETACHED, RETIRED)


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
    """(allocation id, SQLSTATE, detail) of the rows the shadow could not take, oldest first."""
    return [tuple(row) for row in session.execute(
        "SELECT allocation_id::text, sqlstate, detail FROM reserve_swap.conflicts ORDER BY recorded_at, allocation_id "
        "LIMIT %s", (limit,)).fetchall()]


def refuse_other_revisions(session: Any, action: str) -> None:
    """While a swap of allocations is in flight, no other revision may run: the database is between states
    that only the swap's own revision knows how to finish (or `reserve swap abort` undoes)."""
    found = read(session)
    if found is None:
        return
    if found.phase in DROPPABLE["drop"]:
        left_by = "the rollback of allocations replaced" if found.phase == RETIRED else "the closed window left"
        raise CommandError(
            f"{action}: the table {left_by} is still in {SHADOW} (its foreign keys need a brief ACCESS "
            "EXCLUSIVE on bookings and restaurants to drop): run `reserve swap finish` when nothing holds them, "
            "then this again. Nothing was changed.")
    if found.phase == WINDOW:
        raise CommandError(
            f"{action}: the online swap's window is open (since {found.window_opened_at:%Y-%m-%d %H:%M} UTC), but "
            "alembic_version does not name the swap's revision: finish the swap first with `alembic upgrade head`")
    raise CommandError(
        f"{action}: an online {found.direction} of allocations is in flight (phase: {found.phase}); nothing was "
        f"changed. Finish it by rerunning `alembic {found.direction} {'head' if found.direction == 'upgrade' else '-1'}`"
        + (", or drop it with `reserve swap abort`" if not found.exchanged else ""))
