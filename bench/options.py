"""The settings of one benchmark run, read by every part of it.

Apart from the run itself (bench/suite.py) so that the parts it drives
(probes, swap, exploration, confirm) can take them without importing the
suite. The key order measured as "shipped" is a setting too: what
``reserve/schema/guards.py`` ships unless a run proposes another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.builds import KEY_CANDIDATES, proposed_guard
from reserve.schema.guards import Guard

CLIENTS = (1, 4, 8)


@dataclass
class Options:
    rows: int = 1_000_000
    scaling: tuple[int, ...] = ()
    repeats: int = 3
    probe_runs: int = 200
    probe_budget_s: float = 4.0
    explore: bool = True
    key_candidates: tuple[tuple[str, ...], ...] = KEY_CANDIDATES
    confirm: bool = True
    confirm_clients: tuple[int, ...] = CLIENTS
    confirm_rounds: int = 5
    confirm_seconds: float = 4.0
    server_settings: dict[str, str] = field(default_factory=dict)
    # A key order to measure as if guards.NEW_GUARD shipped it (None: what guards.py ships).
    proposed_key: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        proposed_guard(self.proposed_key)  # a key order of other columns fails here, before any server starts

    @property
    def new_guard(self) -> Guard:
        """The guard this run's swap installs (passed to each Alembic run, the predictor and the floors)."""
        return proposed_guard(self.proposed_key)

    @property
    def shipped_key(self) -> tuple[str, ...]:
        """The key order measured as "shipped": ``guards.NEW_GUARD.key``, or the proposed one."""
        return self.new_guard.key
