"""What the online swap's tests share: driving its phases step by step from the test, and comparing tables.

The phases are the library's own (reserve.schema.swap), run through a plain
psycopg session, so that a test can stop between two batches, hold a row
lock in another connection, or commit two application transactions at the
same moment, and then look.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from reserve.schema.guards import NEW_GUARD, OLD_GUARD
from reserve.schema.options import SwapOptions
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import changelog, exchange, online
from reserve.schema.swap import state as swap_state
from tests.support import Database, Venue, slot, wait_until  # noqa: F401 (wait_until: for the swap tests)

ACTION = "test swap"
OPTIONS = SwapOptions(method="online", snapshot_wait_s=5.0)
COLUMNS = "id, restaurant_id, booking_id, resource_type, resource_id, \"window\", shadow, is_maintenance"


def session(conn: psycopg.Connection[Any]) -> PsycopgSession:
    assert conn.autocommit, "the swap's phases commit one by one: give it an autocommit connection"
    return PsycopgSession(conn)


def build(conn: psycopg.Connection[Any], direction: str = "upgrade") -> swap_state.SwapState:
    """The shadow and the capture (phase: building)."""
    online.build(session(conn), direction, NEW_GUARD, action=ACTION)
    found = swap_state.read(conn)
    assert found is not None
    return found


def standby_guard(direction: str) -> str:
    return (NEW_GUARD if direction == "upgrade" else OLD_GUARD).name


def copy_batch(conn: psycopg.Connection[Any], pages: int = 1) -> int:
    """One bulk-copy batch of ``pages`` pages; the rows it copied."""
    copied, _ = online.copy_next_batch(session(conn), pages, action=ACTION)
    return copied


def replay(conn: psycopg.Connection[Any]) -> int:
    """Replay the whole change log into the shadow (as the swap does between its phases); log rows consumed."""
    return changelog.replay_until(session(conn))


def backfill_rest(conn: psycopg.Connection[Any], pages: int = 1000) -> None:
    """The rest of the backfill as the swap runs it: copy, replay, guard, replay, keys (phase: backfilled)."""
    found = swap_state.read(conn)
    assert found is not None
    online.backfill(session(conn), found, NEW_GUARD, SwapOptions(method="online", batch_rows=50 * pages),
                    action=ACTION)


def exchange_forward(conn: psycopg.Connection[Any]) -> None:
    found = swap_state.read(conn)
    assert found is not None
    exchange.forward(session(conn), found, NEW_GUARD, OPTIONS, action=ACTION)


def open_window(conn: psycopg.Connection[Any]) -> None:
    """After an upgrade's exchange: validate the re-pointed keys and open the window (the capture the other way)."""
    exchange.settle(session(conn), swap_state.read(conn), action=ACTION)


def exchange_back(conn: psycopg.Connection[Any]) -> None:
    """`alembic downgrade -1` inside the window: the exchange back, then the machinery dropped."""
    exchange.back(session(conn), swap_state.read(conn), NEW_GUARD, OPTIONS, action=ACTION)


def rows(conn: psycopg.Connection[Any], table: str) -> set[tuple[Any, ...]]:
    return set(conn.execute(f"SELECT {COLUMNS} FROM {table}").fetchall())


def differences(conn: psycopg.Connection[Any]) -> tuple[set[Any], set[Any]]:
    """(rows live but not in the shadow, rows in the shadow but not live), by full row."""
    live, shadow = rows(conn, swap_state.LIVE), rows(conn, swap_state.SHADOW)
    return live - shadow, shadow - live


def conflict_ids(conn: psycopg.Connection[Any]) -> set[uuid.UUID]:
    return {row[0] for row in conn.execute("SELECT allocation_id FROM reserve_swap.conflicts")}


def insert(conn: psycopg.Connection[Any], restaurant: uuid.UUID, resource: uuid.UUID,
           window: tuple[datetime, datetime], booking: uuid.UUID | None = None) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO allocations (restaurant_id, booking_id, resource_type, resource_id, \"window\") "
        "VALUES (%s, %s, 'table', %s, tstzrange(%s, %s)) RETURNING id",
        (restaurant, booking, resource, *window)).fetchone()[0]


def waiting_for_a_lock(conn: psycopg.Connection[Any], pid: int) -> bool:
    return conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]


class InThread:
    """Run ``work`` in a thread (it may block on a lock); ``result()`` joins and re-raises its error."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self._value = work()
        except BaseException as exc:  # noqa: BLE001 (handed to the test by result())
            self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout_s: float = 30) -> Any:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "still blocked"
        if self._error is not None:
            raise self._error
        return self._value


def spread_over_pages(conn: psycopg.Connection[Any]) -> None:
    """Rows written from here on take a page of allocations for every few rows (fillfactor 10), so that a batch
    of one page holds a few of them, as a batch of a big table holds a small part of it."""
    conn.execute("ALTER TABLE allocations SET (fillfactor = 10)")


def first_page_ids(conn: psycopg.Connection[Any]) -> list[Any]:
    """The ids the first batch of one page copies, in physical order."""
    return [row[0] for row in conn.execute("SELECT id FROM allocations WHERE ctid < '(1,0)'::tid ORDER BY ctid")]


def two_venues(db_: Database) -> tuple[Any, Any]:
    """Two restaurants with tables, committed (Venue objects of tests.support)."""
    with db_.connect() as conn:
        venues = Venue(conn, "A"), Venue(conn, "B")
        conn.commit()
    return venues


def exchange_with_ddl_queued(db_: Database, ddl: str) -> None:
    """A backfilled swap of one allocation exchanged while an application write holds allocations, with ``ddl``
    queued behind the exchange's lock request by another session (so made as soon as that attempt gives up,
    before its retry): what the exchange then finds under its lock. Raises what the exchange raised."""
    a, _ = two_venues(db_)
    with db_.connect() as conn:
        insert(conn, a.id, a.tables[0], slot(3))
        conn.commit()
    with db_.connect(autocommit=True) as conn:
        build(conn)
        backfill_rest(conn)
    with db_.connect() as app, db_.connect(autocommit=True) as ops, db_.connect(autocommit=True) as dba:
        app.execute("LOCK TABLE allocations IN ROW EXCLUSIVE MODE")  # as an allocation write in flight does
        exchanging = InThread(lambda: exchange_forward(ops))
        wait_until(lambda: waiting_for_a_lock(dba, ops.info.backend_pid), "the exchange to wait for allocations")
        dba.execute(ddl)
        app.commit()
        exchanging.result(timeout_s=60)
