"""reserve.schema.expectations: the shipped expected catalogs are the real ones, and drift is named."""

from __future__ import annotations

from reserve.schema import catalog, expectations
from tests.support import ONLINE, REVISIONS, Database
from tools import expected as expected_tool


def _machinery_text(db_: Database) -> str:
    return catalog.as_text(expectations.machinery(db_.snapshot()))


def test_shipped_expectations_equal_a_fresh_migration_of_every_revision(empty_db: Database):
    assert expectations.shipped() == REVISIONS
    for revision in REVISIONS:
        empty_db.upgrade(revision, ONLINE)
        if revision == expectations.SWAP_REVISION:  # the online upgrade leaves its window open
            assert _machinery_text(empty_db) == catalog.as_text(expectations.expected(expectations.WINDOW)), \
                "reserve/schema/expected/window.txt is stale: run `make expected`"
            empty_db.close_window()
        assert catalog.as_text(empty_db.snapshot()) == catalog.as_text(expectations.expected(revision)), (
            f"reserve/schema/expected/{revision}.txt is stale: run `make expected`"
        )


def test_the_retired_table_a_rollback_leaves_is_the_shipped_one_and_not_drift_below_the_swap(head_db: Database):
    expected_tool.roll_back_leaving_the_table_retired(head_db.url)
    assert _machinery_text(head_db) == catalog.as_text(expectations.expected(expectations.RETIRED)), \
        "reserve/schema/expected/retired.txt is stale: run `make expected`"
    with head_db.connect() as conn:
        assert expectations.drift(conn, REVISIONS[-2]) == []
        assert expectations.drift(conn, REVISIONS[-1]) != []
        conn.execute("ALTER TABLE reserve_swap.allocations ADD COLUMN extra int")
        assert any("extra" in d.line for d in expectations.drift(conn, REVISIONS[-2]))  # changed machinery is drift


def test_an_open_window_is_not_drift_at_head_but_a_changed_one_is(head_db: Database):
    with head_db.connect() as conn:
        assert expectations.drift(conn, REVISIONS[-1]) == []
        conn.execute("DROP TRIGGER reserve_swap_capture ON public.allocations")
        found = expectations.drift(conn, REVISIONS[-1])
    assert [(d.section, d.kind) for d in found] == [("triggers", "missing")], found


def test_a_hand_dropped_constraint_is_reported_by_name(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_no_overlap")
        found = expectations.drift(conn, REVISIONS[-1])
    assert [(d.section, d.kind) for d in found] == [("constraints", "missing"), ("indexes", "missing")]
    assert all("allocations_no_overlap" in d.line for d in found)


def test_a_hot_fixed_function_is_reported_by_name(head_db: Database):
    with head_db.connect() as conn:
        body = conn.execute("SELECT pg_get_functiondef('public.require_restaurant_context'::regproc)").fetchone()[0]
        conn.execute(body.replace("Restaurant context is required", "Restaurant context required (hotfix)"))
        found = expectations.drift(conn, REVISIONS[-1])
    assert {d.kind for d in found} == {"missing", "unexpected"}
    assert all(d.section == "functions" and "public.require_restaurant_context()" in d.line for d in found)


def test_other_applications_objects_are_not_drift(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("CREATE TABLE public.newsletter (id int PRIMARY KEY)")
        conn.execute("CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        assert expectations.drift(conn, REVISIONS[-1]) == []


def test_an_extra_grant_to_anon_is_drift(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("GRANT SELECT ON public.bookings TO anon")
        found = expectations.drift(conn, REVISIONS[-1])
    assert [d.kind for d in found] == ["missing", "unexpected"]
    assert "anon:SELECT" in found[1].line


def test_a_column_grant_and_a_replica_identity_are_drift(head_db: Database):
    """What pg_dump prints of a shipped table and the snapshot once missed (the catalog zoo found them)."""
    with head_db.connect() as conn:
        conn.execute("GRANT SELECT (id) ON public.bookings TO anon")
        conn.execute("ALTER TABLE public.restaurants REPLICA IDENTITY FULL")
        found = expectations.drift(conn, REVISIONS[-1])
    unexpected = [d.line for d in found if d.kind == "unexpected"]
    assert any(line.startswith("public.bookings.id ") and "anon:SELECT" in line for line in unexpected)
    assert any(line.startswith("public.restaurants ") and "replica_identity=f" in line for line in unexpected)
