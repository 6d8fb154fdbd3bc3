"""States between two revisions that this package leaves on purpose, and the one command that completes each.

Every step either commits whole or changes nothing, except two, by design:

- the locked method's rollback commits the restored guard first (that is what
  stops bad bookings) and only then builds the redundant index concurrently,
  which may wait for unrelated long transactions;
- the online swap (reserve.schema.swap) commits phase by phase: build,
  backfill, exchange, validation. Alembic records the revision only when the
  last phase is done.

``identify`` recognizes each such state, from the catalog and the swap's own
state row, so that ``reserve verify`` says exactly what is done, what is left
and what finishes it, instead of listing drift. None of them fails or blocks
an application write.
"""

from __future__ import annotations

from dataclasses import dataclass

from reserve.schema import catalog, expectations, revisions
from reserve.schema.guards import OLD_GUARD, REDUNDANT_INDEX
from reserve.schema.swap.state import BACKFILLED, BUILDING, DROPPABLE, SWAPPED, WINDOW, SwapState

SWAP_REVISION = revisions.SWAP_REVISION


@dataclass(frozen=True)
class Unfinished:
    """A known state between revisions: what is done, what is left, and the command that does the rest."""

    recorded: str
    done: str
    left: str
    command: str
    alternative: str | None = None  # another way out, e.g. dropping an unfinished swap

    def __str__(self) -> str:
        other = f", or undo it with `{self.alternative}`" if self.alternative else ""
        return f"{self.done}; left: {self.left}; complete it with `{self.command}`{other}"


def identify(recorded: str | None, live: catalog.Snapshot, pending_indexes: list[str],
             swap: SwapState | None = None) -> Unfinished | None:
    """The unfinished state the database is in, or None when it is at a boundary or simply drifted."""
    if swap is not None:
        return _online(recorded, live, swap)
    if recorded != SWAP_REVISION:
        return None
    below = expectations.expected(revisions.chain()[-2])
    index = [line for line in below.get("indexes", []) if f" {REDUNDANT_INDEX} ON " in line]
    differences = expectations.compare(below, live)
    if [(d.section, d.kind, d.line) for d in differences] != [("indexes", "missing", line) for line in index]:
        return None
    leftover = f" ({', '.join(pending_indexes)} is half built and will be replaced)" if pending_indexes else ""
    return Unfinished(
        recorded,
        done=f"the rollback of {SWAP_REVISION} restored {OLD_GUARD.name}, which guards every booking",
        left=f"its redundant index {REDUNDANT_INDEX}, built concurrently (blocks nobody){leftover}",
        command="alembic downgrade -1",
    )


def _matches_but_for_validation(revision: str, outside: catalog.Snapshot) -> bool:
    """The catalog is ``revision``'s, except for foreign keys still NOT VALID (re-pointed, being validated)."""
    found = expectations.compare(expectations.expected(revision), outside)
    missing = {(d.section, d.line) for d in found if d.kind == "missing"}
    unvalidated = {(d.section, d.line.removesuffix(" [NOT VALID]").removesuffix(" NOT VALID")) for d in found
                   if d.kind == "unexpected" and d.line.endswith(" [NOT VALID]")}
    return missing == unvalidated and len(found) == 2 * len(missing)


def _online(recorded: str | None, live: catalog.Snapshot, swap: SwapState) -> Unfinished | None:
    """An online swap in flight: outside its machinery, the catalog is the revision's before it or after it."""
    if swap.phase in DROPPABLE["drop"]:
        return None  # at a boundary: the emptied table is named by verify, not pending work
    below = revisions.chain()[-2]
    before, after = (below, SWAP_REVISION) if swap.direction == "upgrade" else (SWAP_REVISION, below)
    if recorded not in (below, SWAP_REVISION) or not _matches_but_for_validation(
            after if swap.exchanged else before, expectations.without_machinery(live)):
        return None
    command = f"alembic {swap.direction} {'head' if swap.direction == 'upgrade' else '-1'}"
    conflicts = f"; {swap.conflicts} allocation(s) the shadow cannot take block the exchange" if swap.conflicts else ""
    if swap.phase in (BUILDING, BACKFILLED):
        copied = "backfilled" if swap.phase == BACKFILLED else f"{swap.rows_copied} rows copied so far"
        return Unfinished(recorded or "none", done=f"an online {swap.direction} is building its shadow with "
                       f"{swap.standby_guard} ({copied}); the change log records every write for the replay"
                       f"{conflicts}", left="the backfill, then the exchange (milliseconds under the lock)",
                       command=command, alternative="reserve swap abort")
    if swap.phase == SWAPPED:
        return Unfinished(recorded or "none", done=f"the online {swap.direction} exchanged the tables "
                       f"({after}'s guard is in force)", left="validating the re-pointed foreign keys"
                       + ("" if swap.direction == "upgrade" else ", then dropping the table that left"), command=command)
    if swap.phase == WINDOW and recorded != SWAP_REVISION:
        return Unfinished(recorded or "none", done="the online upgrade exchanged the tables and opened its window",
                       left=f"recording {SWAP_REVISION} in alembic_version", command=command)
    return None
