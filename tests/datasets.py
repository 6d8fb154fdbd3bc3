"""Databases with data, for the fault and traffic tests of the swap (fixtures for tests/migrations).

Three templates hold the same ``ROWS`` generated allocations: below the swap
(the old guard), at head with no window (as the locked method, or a finished
window, leaves it) and at head with the online upgrade's window open. Each
test gets a fresh clone, so data is generated once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from reserve import db
from reserve.rollout import alembic_runner, dataset
from tests.support import REVISIONS, Database, cloned, janitor

BELOW_SWAP, HEAD = REVISIONS[-2], REVISIONS[-1]
WINDOW = "window"
# Enough for the locked guard build to last ~1 s here, and for the online backfill to take a dozen batches.
ROWS = 60_000
LOCKED = ["swap_method=locked"]  # x of an in-process run (an "-x" item here was once ignored silently)
LOCKED_CLI = ["-x", *LOCKED]  # the same, as `alembic` arguments
ONLINE = ["swap_method=online"]  # x of an in-process run: the online method, said explicitly


@pytest.fixture(scope="session")
def data_templates(pg_server: Any) -> Iterator[dict[str, str]]:
    """Template databases with ROWS allocations: below the swap, at head, at head with the window open."""
    names = {state: f"reserve_data_{state[:12]}_{os.getpid()}" for state in (BELOW_SWAP, HEAD, WINDOW)}
    with contextlib.ExitStack() as templates:
        templates.enter_context(janitor(pg_server, names[BELOW_SWAP]))
        below = pg_server.url(names[BELOW_SWAP])
        alembic_runner.upgrade(below, BELOW_SWAP)
        with db.connect(below, autocommit=True) as conn:
            dataset.generate(conn, dataset.Shape.for_rows(ROWS))
            conn.execute("VACUUM ANALYZE")
        for state, x in ((HEAD, LOCKED), (WINDOW, ONLINE)):
            templates.enter_context(cloned(pg_server, names[BELOW_SWAP], names[state]))
            alembic_runner.upgrade(pg_server.url(names[state]), "head", x=x)
        yield names


@pytest.fixture
def below_swap(pg_server: Any, data_templates: dict[str, str]) -> Iterator[Database]:
    """A fresh database below the swap (old guard) with ROWS allocations."""
    with cloned(pg_server, data_templates[BELOW_SWAP]) as database:
        yield database


@pytest.fixture
def at_head(pg_server: Any, data_templates: dict[str, str]) -> Iterator[Database]:
    """A fresh database at head (allocations_no_overlap), no window open, with ROWS allocations."""
    with cloned(pg_server, data_templates[HEAD]) as database:
        yield database


@pytest.fixture
def in_window(pg_server: Any, data_templates: dict[str, str]) -> Iterator[Database]:
    """A fresh database at head after an online upgrade: the previous table kept in step, ROWS allocations."""
    with cloned(pg_server, data_templates[WINDOW]) as database:
        yield database
