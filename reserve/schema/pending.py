"""States between two revisions that this package leaves on purpose, and the one command that completes each.

Every step either commits whole or changes nothing, with one exception by
design: the swap's rollback commits the restored guard first (that is what
stops bad bookings) and only then builds the redundant index concurrently,
which may wait for unrelated long transactions. Interrupted there, the
database records ``0004_allocations_no_overlap`` but holds the old guard
without its index. ``identify`` recognizes that state from the catalog, so
``reserve verify`` can say exactly what is pending and what finishes it,
instead of listing drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from reserve.schema import catalog, expectations, revisions
from reserve.schema.guards import OLD_GUARD, REDUNDANT_INDEX

SWAP_REVISION = "0004_allocations_no_overlap"


@dataclass(frozen=True)
class Pending:
    """A known state between revisions: what is done, what is left, and the command that does the rest."""

    recorded: str
    done: str
    left: str
    command: str

    def __str__(self) -> str:
        return f"{self.done}; pending: {self.left}; complete it with `{self.command}`"


def identify(recorded: str | None, live: catalog.Snapshot, pending_indexes: list[str]) -> Pending | None:
    """The pending state the database is in, or None when it is at a boundary or simply drifted."""
    if recorded != SWAP_REVISION:
        return None
    below = expectations.expected(revisions.chain()[-2])
    index = [line for line in below.get("indexes", []) if f" {REDUNDANT_INDEX} ON " in line]
    differences = expectations.compare(below, live)
    if [(d.section, d.kind, d.line) for d in differences] != [("indexes", "missing", line) for line in index]:
        return None
    leftover = f" ({', '.join(pending_indexes)} is half built and will be replaced)" if pending_indexes else ""
    return Pending(
        recorded,
        done=f"the rollback of {SWAP_REVISION} restored {OLD_GUARD.name}, which guards every booking",
        left=f"its redundant index {REDUNDANT_INDEX}, built concurrently (blocks nobody){leftover}",
        command="alembic downgrade -1",
    )
