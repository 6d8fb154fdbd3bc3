"""The online swap under random writes: whatever sequence of inserts, updates, deletes and rolled-back work the
application does while the backfill runs (some of it in transactions that stay open across a batch), the table
that is live after the exchange holds exactly the rows the application committed, and the previous table
(kept in step in the window) holds them too; and whatever it writes inside the window, the exchange back leaves
exactly what it committed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import swapping
from tests.support import NOW, Database, cloned

pytestmark = pytest.mark.slow  # `make test-slow`: a hypothesis search over write histories

ROWS_AT_START = 30

# One step of the application ...
WRITES = (
    st.tuples(st.just("insert"), st.integers(0, 1), st.integers(0, 2), st.integers(0, 400)),
    st.tuples(st.just("update"), st.integers(0, 10_000), st.integers(0, 400)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("swap_windows"), st.integers(0, 10_000)),
    st.tuples(st.just("rolled_back_insert"), st.integers(0, 1), st.integers(0, 400)),
)
# ... or of the backfill.
BATCHES = (
    st.tuples(st.just("batch"), st.integers(1, 3)),  # pages
    st.tuples(st.just("batch_while_open"), st.integers(0, 10_000), st.integers(0, 400), st.integers(1, 3)),
)
operations = st.one_of(*WRITES, *BATCHES)
writes = st.one_of(*WRITES)


def _window(slot: int) -> tuple[Any, Any]:
    start = NOW + timedelta(days=30, minutes=30 * slot)
    return start, start + timedelta(minutes=30)


def _pick(conn: psycopg.Connection[Any], n: int) -> Any:
    ids = [row[0] for row in conn.execute("SELECT id FROM allocations ORDER BY id")]
    return ids[n % len(ids)] if ids else None


def _move(conn: psycopg.Connection[Any], allocation: Any, slot: int) -> None:
    """Move an allocation to a free slot of its resource (the old guard refuses an overlap at commit)."""
    conn.execute("UPDATE allocations a SET \"window\" = tstzrange(%s, %s) WHERE id = %s AND NOT EXISTS ("
                 "SELECT 1 FROM allocations o WHERE o.resource_id = a.resource_id AND o.id <> a.id "
                 "AND o.\"window\" && tstzrange(%s, %s))", (*_window(slot), allocation, *_window(slot)))


def _insert(conn: psycopg.Connection[Any], venues: Any, venue: int, table: int, slot: int) -> None:
    chosen = venues[venue]
    conn.execute("INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                 "SELECT %s, 'table', %s, tstzrange(%s, %s) WHERE NOT EXISTS (SELECT 1 FROM allocations o "
                 "WHERE o.resource_id = %s AND o.\"window\" && tstzrange(%s, %s))",
                 (chosen.id, chosen.tables[table], *_window(slot), chosen.tables[table], *_window(slot)))


def _apply(app: psycopg.Connection[Any], backfill: psycopg.Connection[Any], venues: Any, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "insert":
        _insert(app, venues, op[1], op[2], op[3])
    elif kind == "update":
        if (target := _pick(app, op[1])) is not None:
            _move(app, target, op[2])
    elif kind == "delete":
        if (target := _pick(app, op[1])) is not None:
            app.execute("DELETE FROM allocations WHERE id = %s", (target,))
    elif kind == "swap_windows":  # through a temporary overlap, repaired before commit
        app.execute("SET CONSTRAINTS ALL DEFERRED")  # the old guard is deferred already; the new one may be
        first = _pick(app, op[1])
        partner = first and app.execute(
            "SELECT o.id, o.\"window\", a.\"window\" FROM allocations a JOIN allocations o ON o.resource_id = a.resource_id "
            "AND o.id <> a.id WHERE a.id = %s ORDER BY o.id LIMIT 1", (first,)).fetchone()
        if partner:
            second, second_window, first_window = partner
            app.execute("UPDATE allocations SET \"window\" = %s WHERE id = %s", (second_window, first))
            app.execute("UPDATE allocations SET \"window\" = %s WHERE id = %s", (first_window, second))
    elif kind == "rolled_back_insert":
        _insert(app, venues, op[1], 0, op[2])
        app.rollback()
        return
    elif kind == "batch":
        swapping.copy_batch(backfill, op[1])
        return
    elif kind == "batch_while_open":  # a write left open while a batch runs: the batch may wait for its row lock
        if (target := _pick(app, op[1])) is not None:
            _move(app, target, op[2])
        batch = swapping.InThread(lambda: swapping.copy_batch(backfill, op[3]))
        swapping.wait_until(lambda: batch.done or swapping.waiting_for_a_lock(app, backfill.info.backend_pid),
                            "the batch to finish or wait")
        app.commit()
        batch.result()
        return
    app.commit()


@contextmanager
def _database(pg_server: Any, templates: Any) -> Iterator[tuple[Database, Any]]:
    """A database below the swap with two venues and ROWS_AT_START allocations, a few a page; dropped after."""
    with cloned(pg_server, templates["pre_swap"]) as target:
        venues = swapping.two_venues(target)
        with target.connect() as app:
            swapping.spread_over_pages(app)  # a few rows a page: batches of pages copy part of the table
            for n in range(ROWS_AT_START):
                _insert(app, venues, n % 2, n % 3, n)
            app.commit()
        yield target, venues


def _committed(app: psycopg.Connection[Any], ops: psycopg.Connection[Any], venues: Any,
               steps: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Run ``steps``; the rows of allocations the application has committed at the end."""
    for op in steps:
        _apply(app, ops, venues, op)
    committed = swapping.rows(app, "public.allocations")
    app.commit()
    return committed


PROPERTY = settings(max_examples=20, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(steps=st.lists(operations, min_size=5, max_size=40))
def test_after_the_exchange_the_live_table_is_exactly_what_the_application_committed(pg_server, templates, steps):
    with _database(pg_server, templates) as (target, venues), target.connect() as app, \
            target.connect(autocommit=True) as backfill:
        swapping.build(backfill)
        committed = _committed(app, backfill, venues, steps)
        swapping.backfill_rest(backfill)
        swapping.exchange_forward(backfill)
        assert swapping.rows(backfill, "public.allocations") == committed
        assert swapping.rows(backfill, "reserve_swap.allocations") == committed  # the window, in step
        assert swapping.conflict_ids(backfill) == set()


@PROPERTY
@given(steps=st.lists(writes, min_size=5, max_size=40))
def test_writes_inside_the_window_are_all_there_after_the_exchange_back(pg_server, templates, steps):
    """After the online upgrade, the application goes on writing; `downgrade -1` inside the window is the
    exchange back: the live table is then exactly what the application committed, nothing lost or resurrected."""
    with _database(pg_server, templates) as (target, venues), target.connect() as app, \
            target.connect(autocommit=True) as ops:
        swapping.build(ops)
        swapping.backfill_rest(ops)
        swapping.exchange_forward(ops)
        swapping.open_window(ops)
        committed = _committed(app, ops, venues, steps)
        swapping.exchange_back(ops)
        assert swapping.rows(ops, "public.allocations") == committed
        assert ops.execute("SELECT to_regclass('reserve_swap.state')").fetchone()[0] is None  # machinery gone
