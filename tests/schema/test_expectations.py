"""reserve.schema.expectations: the shipped expected catalogs are the real ones, and drift is named."""

from __future__ import annotations

from reserve.schema import catalog, expectations
from tests.support import REVISIONS, Database


def test_shipped_expectations_equal_a_fresh_migration_of_every_revision(empty_db: Database):
    assert expectations.shipped() == REVISIONS
    for revision in REVISIONS:
        empty_db.upgrade(revision)
        assert catalog.as_text(empty_db.snapshot()) == catalog.as_text(expectations.expected(revision)), (
            f"reserve/schema/expected/{revision}.txt is stale: run `make expected`"
        )


def test_a_fresh_head_has_no_drift(head_db: Database):
    with head_db.connect() as conn:
        assert expectations.drift(conn, REVISIONS[-1]) == []


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
