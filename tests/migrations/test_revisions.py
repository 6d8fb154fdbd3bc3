"""Each revision on its own: it round-trips, its downgrade is the rollback the checklist promised,
and the swap never waits in the lock queue for long or changes anything when it gives up."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.util import CommandError

from reserve.rollout import alembic_runner
from reserve.rollout.verify import verify
from reserve.schema import expectations
from reserve.schema.catalog import pending_indexes
from reserve.schema.guards import NEW_GUARD, OLD_GUARD, REDUNDANT_INDEX, is_in_place
from reserve.schema.swap import state as swap_state
from tests.support import ONLINE, REVISIONS, Database, Venue, confirm, slot

BELOW_SWAP = REVISIONS[-2]  # the revision `alembic downgrade -1` from head returns to
FAST_LOCK = ["swap_lock_timeout=200ms", "swap_lock_attempts=2", "swap_lock_pause=0.1"]
LOCKED = ["swap_method=locked"]


def _constraint_names(db: Database) -> set[str]:
    with db.connect() as conn:
        rows = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'public.allocations'::regclass")
        return {row[0] for row in rows}


def _function_body(db: Database) -> str:
    with db.connect() as conn:
        return conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'confirm_hold_assignment_tx'").fetchone()[0]


@pytest.mark.parametrize("revision", REVISIONS)
def test_stairway_upgrade_downgrade_upgrade_gives_identical_catalogs(empty_db: Database, revision: str):
    index = REVISIONS.index(revision)
    if index:
        empty_db.upgrade(REVISIONS[index - 1])
    below = empty_db.snapshot()
    empty_db.upgrade(revision)
    at = empty_db.snapshot()
    assert at != below
    empty_db.downgrade("-1")
    assert empty_db.snapshot() == below
    empty_db.upgrade(revision)
    assert empty_db.snapshot() == at


def test_downgrade_one_from_head_is_the_emergency_rollback(head_db: Database):
    v12_body = _function_body(head_db)
    head_db.downgrade("-1")
    assert head_db.current() == BELOW_SWAP
    names = _constraint_names(head_db)
    assert OLD_GUARD.name in names and NEW_GUARD.name not in names
    with head_db.connect() as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"public.{REDUNDANT_INDEX}",)).fetchone()[0] is not None
        assert conn.execute("SELECT to_regclass('public.booking_confirmation_results')").fetchone()[0] is not None
    assert _function_body(head_db) == v12_body


def test_old_guard_catalog_after_rollback_equals_the_baseline(baseline_db: Database, head_db: Database):
    head_db.downgrade("-1")
    baseline = {s: v for s, v in baseline_db.snapshot().items()}
    rolled_back = head_db.snapshot()
    assert [c for c in rolled_back["constraints"] if "allocations " in c] == [
        c for c in baseline["constraints"] if "allocations " in c
    ]
    assert [i for i in rolled_back["indexes"] if " ON public.allocations " in i] == [
        i for i in baseline["indexes"] if " ON public.allocations " in i
    ]


def _evidence_rows(db: Database, schema: str = "public") -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(
            f"SELECT booking_id, hold_id, restaurant_id, idempotency_key, table_ids, assignment_window, actor_id, "
            f"metadata, checked_at FROM {schema}.booking_confirmation_results ORDER BY hold_id"
        ).fetchall()


def test_evidence_rows_survive_downgrade_to_baseline_and_upgrade_head(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        for i, table in enumerate(venue.tables):
            booking = venue.booking(slot(24 + i))
            confirm(conn, venue.hold([table], slot(24 + i), metadata={"policyVersion": "p1"}), booking, key=f"k{i}")
    before = _evidence_rows(head_db)
    assert len(before) == 3

    head_db.downgrade("0001_baseline")
    with head_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.booking_confirmation_results')").fetchone()[0] is None
        for role in ("anon", "authenticated", "service_role"):
            assert not conn.execute(
                "SELECT has_schema_privilege(%s, 'reserve_archive', 'USAGE')", (role,)
            ).fetchone()[0]
    assert _evidence_rows(head_db, "reserve_archive") == before

    head_db.upgrade("head")
    assert _evidence_rows(head_db) == before
    with head_db.connect() as conn:
        assert conn.execute("SELECT to_regnamespace('reserve_archive')").fetchone()[0] is None


ROLLBACKS = {  # how `alembic downgrade -1` runs from head: (close the window first?, -x options)
    "exchange back in the window": (False, []),
    "online rebuild": (True, []),
    "locked": (True, LOCKED),
}


@pytest.mark.parametrize("rollback", list(ROLLBACKS))
def test_downgrade_refuses_allocations_that_break_the_old_guard_and_changes_nothing(head_db: Database, rollback: str):
    close_window, x = ROLLBACKS[rollback]
    if close_window:
        head_db.close_window()
    with head_db.connect() as conn:
        first, second = Venue(conn, "A"), Venue(conn, "B")
        shared_resource = first.tables[0]
        ids = []
        for venue in (first, second):
            ids.append(conn.execute(
                "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                "VALUES (%s, 'table', %s, tstzrange(%s, %s)) RETURNING id",
                (venue.id, shared_resource, *slot(24)),
            ).fetchone()[0])
    before = head_db.snapshot()

    with pytest.raises(CommandError) as refused:
        head_db.downgrade("-1", x=x)

    assert f"{min(ids)} & {max(ids)}" in str(refused.value)  # the pair, as the locked pre-check names it
    assert OLD_GUARD.name in str(refused.value) and "Nothing was changed" in str(refused.value)
    assert head_db.current() == REVISIONS[-1]
    assert head_db.snapshot() == before


def test_upgrade_without_the_old_guard_scans_and_refuses_same_restaurant_overlaps(empty_db: Database):
    empty_db.upgrade(BELOW_SWAP)
    with empty_db.connect() as conn:
        conn.execute(OLD_GUARD.drop_sql())
        venue = Venue(conn)
        for _ in range(2):
            conn.execute(
                "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                "VALUES (%s, 'table', %s, tstzrange(%s, %s))",
                (venue.id, venue.tables[0], *slot(24)),
            )
    with pytest.raises(CommandError, match="allocations_no_overlap"):
        empty_db.upgrade("head")
    assert empty_db.current() == BELOW_SWAP


def test_locked_swap_gives_up_cleanly_when_another_transaction_holds_allocations(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    before = baseline_db.snapshot()
    with baseline_db.connect() as blocker:
        blocker.execute("SELECT count(*) FROM allocations")  # ACCESS SHARE, held until rollback
        with pytest.raises(CommandError, match="could not lock public.allocations after 2 attempts"):
            baseline_db.upgrade("head", x=[*FAST_LOCK, *LOCKED])
        blocker.rollback()
    assert baseline_db.current() == BELOW_SWAP
    assert baseline_db.snapshot() == before
    baseline_db.upgrade("head", x=[*FAST_LOCK, *LOCKED])
    assert baseline_db.current() == REVISIONS[-1]


def test_online_swap_gives_up_at_its_exchange_keeps_the_copy_and_a_rerun_resumes_from_it(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    with baseline_db.connect() as conn:
        venue = Venue(conn)
        for table in venue.tables:
            conn.execute("INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
                         "VALUES (%s, 'table', %s, tstzrange(%s, %s))", (venue.id, table, *slot(3)))
        conn.commit()
    before = baseline_db.snapshot()
    with baseline_db.connect() as blocker:
        blocker.execute("SELECT count(*) FROM allocations")  # ACCESS SHARE: the build and backfill go on, not the exchange
        with pytest.raises(CommandError, match=r"exchange: could not lock .*public\.allocations.* after 2 attempts"):
            baseline_db.upgrade("head", x=[*FAST_LOCK, *ONLINE])
        blocker.rollback()
    assert baseline_db.current() == BELOW_SWAP
    assert expectations.without_machinery(baseline_db.snapshot()) == before  # the live table is untouched
    with baseline_db.connect() as conn:
        found = swap_state.read(conn)
        assert found is not None and found.phase == swap_state.BACKFILLED and found.rows_copied == len(venue.tables)
    check = next(c for c in verify(baseline_db.url).checks if c.name == "catalog")
    assert check.data["command"] == "alembic upgrade head" and check.data["alternative"] == "reserve swap abort"

    baseline_db.upgrade("head", x=[*FAST_LOCK, *ONLINE])
    assert baseline_db.current() == REVISIONS[-1]
    with baseline_db.connect() as conn:
        assert swap_state.read(conn).rows_copied == found.rows_copied  # resumed: nothing copied twice
    assert verify(baseline_db.url).exit_code == 0


def test_readers_are_not_stalled_longer_than_the_lock_timeout_while_the_swap_waits(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    lock_timeout_s, attempts = 0.3, 4
    x = [f"swap_lock_timeout={int(lock_timeout_s * 1000)}ms", f"swap_lock_attempts={attempts}", "swap_lock_pause=0.3"]
    stalls: list[float] = []
    done = threading.Event()

    def reader() -> None:
        with baseline_db.connect(autocommit=True) as conn:
            while not done.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM allocations")
                stalls.append(time.monotonic() - started)
                time.sleep(0.02)

    with baseline_db.connect() as blocker:
        blocker.execute("SELECT count(*) FROM allocations")
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            with pytest.raises(CommandError):
                baseline_db.upgrade("head", x=x)
        finally:
            done.set()
            thread.join()
        blocker.rollback()
    # A reader queues behind the waiting ALTER for at most one lock_timeout (plus scheduling slack).
    assert stalls, "the reader never ran"
    assert max(stalls) < lock_timeout_s + 1.0
    assert baseline_db.current() == BELOW_SWAP


def test_a_rollback_that_cannot_get_its_lock_changes_nothing_at_all(head_db: Database):
    at_head = head_db.snapshot()
    with head_db.connect() as blocker:
        blocker.execute("SELECT count(*) FROM allocations")
        with pytest.raises(CommandError, match="could not lock public.allocations"):
            head_db.downgrade("-1", x=FAST_LOCK)
        blocker.rollback()
    assert head_db.current() == REVISIONS[-1]
    assert head_db.snapshot() == at_head
    with head_db.connect() as conn:
        assert pending_indexes(conn) == []  # the index is built only after the guard is back


def test_a_locked_rollback_interrupted_in_its_index_build_keeps_the_old_guard_and_a_rerun_finishes(
        head_db: Database, baseline_db: Database):
    head_db.close_window()
    with head_db.connect() as reporter:
        reporter.execute("SET application_name = 'weekly-report'")
        reporter.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reporter.execute("SELECT count(*) FROM restaurants")  # a snapshot, and no lock on allocations
        reporter_pid = reporter.info.backend_pid
        with pytest.raises(CommandError) as interrupted:
            head_db.downgrade("-1", x=[*FAST_LOCK, *LOCKED, "index_build_wait=300ms"])
        message = str(interrupted.value)
        reporter.rollback()
    assert "downgrade 0004_allocations_no_overlap: the concurrent build of index allocations_resource_window_idx" in message
    assert f"pid {reporter_pid} (weekly-report" in message and "older snapshot" in message
    assert "allocations_resource_window_excl is restored, and that is committed" in message
    assert head_db.current() == REVISIONS[-1]
    with head_db.connect() as conn:
        assert is_in_place(conn, OLD_GUARD) and not is_in_place(conn, NEW_GUARD)
    check = next(c for c in verify(head_db.url).checks if c.name == "catalog")
    assert check.status == "fail" and check.data["command"] == "alembic downgrade -1"
    assert REDUNDANT_INDEX in check.data["left"]

    head_db.downgrade("-1", x=[*FAST_LOCK, *LOCKED])
    assert head_db.current() == BELOW_SWAP
    with head_db.connect() as conn:
        assert pending_indexes(conn) == []
    rolled_back = head_db.snapshot()
    assert [i for i in rolled_back["indexes"] if " ON public.allocations " in i] == [
        i for i in baseline_db.snapshot()["indexes"] if " ON public.allocations " in i]
    assert verify(head_db.url).exit_code == 0


def test_lock_retry_options_are_validated(baseline_db: Database):
    baseline_db.upgrade(BELOW_SWAP)
    with pytest.raises(CommandError, match="swap_lock_attempts"):
        baseline_db.upgrade("head", x=["swap_lock_attempts=0"])
    assert baseline_db.current() == BELOW_SWAP


def test_offline_downgrade_script_restores_the_guard_then_commits_then_builds_the_index():


    script = alembic_runner.offline_sql("downgrade", f"{REVISIONS[-1]}:{BELOW_SWAP}")
    check = script.index("DO $check$")
    lock = script.index("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
    guard = script.index(OLD_GUARD.add_sql())
    commit = script.index("COMMIT;", guard)
    build = script.index("CREATE INDEX CONCURRENTLY reserve_pending_")
    assert check < lock < script.index(NEW_GUARD.drop_sql()) < guard < commit < build
    assert "SET LOCAL lock_timeout" in script[check:lock]
    assert script.index(f"RENAME TO {REDUNDANT_INDEX}") > build
    assert "SET lock_timeout = '1h'" in script[commit:build]  # the build's long wait, set after the commit


def test_offline_swap_is_one_transaction_with_a_bounded_lock_wait():
    """The upgrade script's swap is atomic: everything between one BEGIN and its COMMIT."""


    script = alembic_runner.offline_sql("upgrade", f"{BELOW_SWAP}:{REVISIONS[-1]}")
    body = script[script.index("BEGIN;"):script.index("COMMIT;")]
    for statement in (OLD_GUARD.drop_sql(), f"DROP INDEX public.{REDUNDANT_INDEX}", NEW_GUARD.add_sql()):
        assert statement in body
    assert body.index("SET LOCAL lock_timeout") < body.index("LOCK TABLE public.allocations")
