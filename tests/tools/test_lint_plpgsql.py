"""tools.lint_plpgsql: plpgsql_check on every shipped function version, as each revision installs it."""

from __future__ import annotations

import os

import pytest

from reserve import db
from tests.support import Database
from tools import lint_plpgsql


def _available(database: Database) -> bool:
    with database.connect() as conn:
        return bool(conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'plpgsql_check'").fetchone()[0])


@pytest.fixture
def lintable(empty_db: Database) -> Database:
    if not _available(empty_db):
        assert not os.environ.get("CI"), "plpgsql_check is required in CI: `make lint` and `make test` install it"
        pytest.skip("plpgsql_check is not installed (Debian postgresql-15-plpgsql-check; make installs it)")
    return empty_db


def test_every_shipped_function_is_clean_at_every_revision_and_none_is_skipped(lintable: Database):
    result = lint_plpgsql.lint(lintable.url)
    assert lint_plpgsql.unsilenced(result.findings) == ([], [])
    assert result.checked == set(lint_plpgsql.shipped_names())  # the swap's capture and replay too, at head
    assert {"capture", "replay", "confirm_hold_assignment_tx"} <= result.checked


def test_a_function_with_an_unknown_column_reference_fails_the_lint(lintable: Database):
    lint_plpgsql.lint(lintable.url)
    with db.connect(lintable.url, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION public.current_restaurant_id() RETURNS uuid LANGUAGE plpgsql AS "
                     "$$ BEGIN RETURN (SELECT no_such_column FROM public.restaurants LIMIT 1); END $$")
        found = lint_plpgsql.check_installed(conn, "planted").findings
    findings, _ = lint_plpgsql.unsilenced(found)
    assert [(f.function, f.level) for f in findings] == [("current_restaurant_id()", "error")]
    assert 'column "no_such_column" does not exist' in findings[0].message


def test_a_silence_that_matches_no_finding_is_itself_reported():
    silences = {("confirm_hold_assignment_tx", "never said"): "a reason"}
    assert lint_plpgsql.unsilenced([], silences) == ([], [("confirm_hold_assignment_tx", "never said")])
