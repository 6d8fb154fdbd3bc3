"""The online swap against a model of what committed: seeded random writers in all three isolation levels, with
multi-row transactions, savepoints, primary-key changes, replica-role sessions and a TRUNCATE, write while the swap
runs every phase (build, copy, replay, guard, exchange, the window, the exchange back). At the end, and after the
forward exchange, the live table equals the model row by row, in both directions.

The budget is bounded in `make test` (RESERVE_DIFFERENTIAL_SECONDS, default 2 s of writing per phase) and longer
in `make soak`; RESERVE_DIFFERENTIAL_SEED replays a run."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests import swapping
from tests.support import NOW, Database

pytestmark = pytest.mark.slow  # `make test-slow`: every phase of the swap under a differential writer

SEED = int(os.environ.get("RESERVE_DIFFERENTIAL_SEED", "20261202"))
PHASE_S = float(os.environ.get("RESERVE_DIFFERENTIAL_SECONDS", "2"))
WRITERS = 3
ISOLATIONS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")
RETURNING = "RETURNING id, restaurant_id, resource_id, lower(\"window\"), upper(\"window\")"
Row = tuple[Any, ...]


class StaleSnapshot(Exception):
    """A row this writer committed is invisible to its transaction's snapshot: the transaction took it before
    the exchange and reads the new table after it (the MVCC caveat of any table rewrite; the exchange waits for
    older snapshots but not for one taken in its last moments). Never in READ COMMITTED."""


class Writer:
    """One application session that owns its own resources (so that its model is exact), writing random
    transactions until stopped; ``paused`` (held by the driver) keeps it between two transactions."""

    def __init__(self, db_: Database, restaurant: uuid.UUID, resources: list[uuid.UUID], seed: int) -> None:
        self.db, self.restaurant, self.resources = db_, restaurant, resources
        self.random = random.Random(seed)
        self.model: dict[uuid.UUID, Row] = {}
        self.paused = threading.Lock()
        self.stop = threading.Event()
        self.committed = self.failed = 0
        self.stale: list[str] = []  # isolation levels of the transactions that met a stale snapshot
        self.fresh_slot = 10_000  # replica-role writes never overlap anything (their deferred rechecks do not run)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _window(self, slot: int) -> tuple[Any, Any]:
        start = NOW + timedelta(days=30, hours=slot)
        return start, start + timedelta(hours=1)

    def _insert(self, conn: psycopg.Connection, slot: int, pending: dict[uuid.UUID, Row]) -> None:
        row = conn.execute(f"INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") VALUES "
                           f"(%s, 'table', %s, tstzrange(%s, %s)) {RETURNING}",
                           (self.restaurant, self.random.choice(self.resources), *self._window(slot))).fetchone()
        pending[row[0]] = row

    @staticmethod
    def _found(row: Row | None) -> Row:
        if row is None:
            raise StaleSnapshot
        return row

    def _statement(self, conn: psycopg.Connection, pending: dict[uuid.UUID, Row], replica: bool) -> None:
        pick = self.random.random()
        ids = list(pending)
        if replica:
            self.fresh_slot += 2
            if ids and pick < 0.5:
                victim = self.random.choice(ids)
                self._found(conn.execute(f"DELETE FROM allocations WHERE id = %s {RETURNING}", (victim,)).fetchone())
                del pending[victim]
            else:
                self._insert(conn, self.fresh_slot, pending)
        elif not ids or pick < 0.35:
            self._insert(conn, self.random.randrange(300), pending)
        elif pick < 0.55:
            row = self._found(conn.execute(
                f"UPDATE allocations SET \"window\" = tstzrange(%s, %s) WHERE id = %s {RETURNING}",
                (*self._window(self.random.randrange(300)), self.random.choice(ids))).fetchone())
            pending[row[0]] = row
        elif pick < 0.65:
            old = self.random.choice(ids)
            row = self._found(conn.execute(f"UPDATE allocations SET id = gen_random_uuid() WHERE id = %s {RETURNING}",
                                           (old,)).fetchone())
            del pending[old]
            pending[row[0]] = row
        elif pick < 0.85:
            victim = self.random.choice(ids)
            self._found(conn.execute(f"DELETE FROM allocations WHERE id = %s {RETURNING}", (victim,)).fetchone())
            del pending[victim]
        else:  # a multi-row statement: every row of one resource moved by a minute
            resource = self.random.choice(self.resources)
            for row in conn.execute(f"UPDATE allocations SET \"window\" = tstzrange(lower(\"window\") + interval "
                                    f"'1 minute', upper(\"window\") + interval '1 minute') WHERE restaurant_id = %s "
                                    f"AND resource_id = %s {RETURNING}", (self.restaurant, resource)).fetchall():
                pending[row[0]] = row

    def _transaction(self, conn: psycopg.Connection) -> None:
        pending = dict(self.model)
        replica = self.random.random() < 0.15
        isolation = self.random.choice(ISOLATIONS)
        try:
            conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
            if replica:
                conn.execute("SET LOCAL session_replication_role = replica")
            for _ in range(self.random.choice((1, 1, 2, 5, 20, 60))):
                if self.random.random() < 0.1:
                    kept = dict(pending)
                    conn.execute("SAVEPOINT s")
                    self._statement(conn, pending, replica)
                    if self.random.random() < 0.5:
                        conn.execute("ROLLBACK TO SAVEPOINT s")
                        pending = kept
                else:
                    self._statement(conn, pending, replica)
            if self.random.random() < 0.1:
                conn.execute("ROLLBACK")
                return
            conn.execute("COMMIT")
            self.model, self.committed = pending, self.committed + 1
        except psycopg.Error:  # an overlap its guard refused, a serialization failure: nothing committed
            conn.execute("ROLLBACK")
            self.failed += 1
        except StaleSnapshot:
            conn.execute("ROLLBACK")
            self.stale.append(isolation)

    def _run(self) -> None:
        try:
            with self.db.connect(autocommit=True) as conn:
                while not self.stop.is_set():
                    with self.paused:
                        self._transaction(conn)
        except BaseException as exc:  # noqa: BLE001 (handed to the test by join())
            self.error = exc

    def join(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def paused(writers: list[Writer]):
    for writer in writers:
        writer.paused.acquire()
    try:
        yield
    finally:
        for writer in writers:
            writer.paused.release()


def live_rows(conn: psycopg.Connection) -> dict[uuid.UUID, Row]:
    return {row[0]: row for row in conn.execute(
        "SELECT id, restaurant_id, resource_id, lower(\"window\"), upper(\"window\") FROM public.allocations")}


def assert_live_is_the_model(conn: psycopg.Connection, writers: list[Writer]) -> None:
    model = {k: v for writer in writers for k, v in writer.model.items()}
    live = live_rows(conn)
    seed = f"RESERVE_DIFFERENTIAL_SEED={SEED}"
    assert {k: v for k, v in live.items() if k not in model} == {}, f"rows in the table nobody committed ({seed})"
    assert {k: v for k, v in model.items() if live.get(k) != v} == {}, f"committed rows missing or different ({seed})"


def test_every_committed_write_survives_every_phase_of_the_swap_and_its_rollback(pre_swap_db: Database):
    venues = [swapping.two_venues(pre_swap_db)[0] for _ in range(WRITERS)]
    writers = [Writer(pre_swap_db, v.id, v.tables, SEED + n) for n, v in enumerate(venues)]
    for writer in writers:
        writer.thread.start()
    time.sleep(PHASE_S / 2)
    with pre_swap_db.connect(autocommit=True) as swap:
        swapping.build(swap)
        time.sleep(PHASE_S / 2)
        swapping.copy_batch(swap, pages=1)
        with paused(writers):  # a TRUNCATE in the middle of the copy
            swap.execute("TRUNCATE allocations CASCADE")
            for writer in writers:
                writer.model = {}
        time.sleep(PHASE_S / 2)
        swapping.backfill_rest(swap, pages=1)
        time.sleep(PHASE_S / 2)
        swapping.exchange_forward(swap)
        swapping.open_window(swap)
        with paused(writers):
            assert_live_is_the_model(swap, writers)
        for _ in range(3):
            time.sleep(PHASE_S / 3)
            swapping.replay(swap)
        swapping.exchange_back(swap)
        time.sleep(PHASE_S / 2)
        for writer in writers:
            writer.join()
        assert_live_is_the_model(swap, writers)
        assert sum(w.committed for w in writers) > 20, [(w.committed, w.failed) for w in writers]
        assert "READ COMMITTED" not in [level for w in writers for level in w.stale]

