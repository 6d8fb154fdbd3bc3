"""allocator.adjacency_mode per venue: resolution order, refusal of bad values (library, CLI and database),
unknown restaurants, tenant isolation, and the `reserve flags` commands."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from reserve.capacity import flags
from reserve.cli import main
from tests.support import Database, Venue, act_as, sqlstate_of

KEY = flags.ADJACENCY_MODE.key
ENV = flags.ADJACENCY_MODE.env_var


def run(db: Database, *args: str, env: dict[str, str] | None = None):
    environment = {"DATABASE_URL": db.url.render_as_string(hide_password=False), ENV: "", **(env or {})}
    return CliRunner().invoke(main, ["flags", *args], env=environment, catch_exceptions=False)


@pytest.fixture
def venues(head_db: Database):
    with head_db.connect() as conn:
        a, b = Venue(conn, "A"), Venue(conn, "B")
        conn.commit()
    return a.id, b.id


def _overrides(db: Database) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute("SELECT restaurant_id, flag_key, flag_value, enabled FROM feature_flag_overrides "
                            "ORDER BY restaurant_id NULLS FIRST").fetchall()


def test_resolution_goes_venue_then_global_then_environment_then_default(head_db: Database, venues):
    a, b = venues
    with head_db.connect() as conn:
        assert flags.resolve(conn, a, env={}) == flags.Resolution(KEY, a, "connected", flags.DEFAULT)
        assert flags.resolve(conn, a, env={ENV: "neighbors"}).source == flags.ENVIRONMENT
        flags.set_override(conn, "pairwise")
        assert flags.resolve(conn, a, env={ENV: "neighbors"}) == flags.Resolution(KEY, a, "pairwise", flags.GLOBAL)
        flags.set_override(conn, "neighbors", a)
        assert flags.resolve(conn, a, env={}) == flags.Resolution(KEY, a, "neighbors", flags.VENUE)
        assert flags.resolve(conn, b, env={}) == flags.Resolution(KEY, b, "pairwise", flags.GLOBAL)
        assert flags.resolve(conn, None, env={}).value == "pairwise"


def test_a_disabled_override_is_skipped_not_obeyed(head_db: Database, venues):
    a, _ = venues
    with head_db.connect() as conn:
        flags.set_override(conn, "pairwise", a)
        conn.execute("UPDATE feature_flag_overrides SET enabled = false WHERE restaurant_id = %s", (a,))
        assert flags.resolve(conn, a, env={ENV: "neighbors"}) == flags.Resolution(KEY, a, "neighbors", flags.ENVIRONMENT)
        flags.set_override(conn, "pairwise", a)  # setting again re-enables it
        assert flags.resolve(conn, a, env={}).source == flags.VENUE


def test_an_invalid_environment_value_is_an_error_not_the_default(head_db: Database, venues):
    with head_db.connect() as conn, pytest.raises(flags.FlagError, match=f"invalid {ENV} 'diagonal'"):
        flags.resolve(conn, venues[0], env={ENV: "diagonal"})


def test_values_are_trimmed_and_lower_cased(head_db: Database, venues):
    with head_db.connect() as conn:
        assert flags.set_override(conn, " Pairwise ", venues[0]).value == "pairwise"
        assert flags.resolve(conn, venues[0], env={ENV: "NEIGHBORS"}).value == "pairwise"
        flags.unset_override(conn, venues[0])
        assert flags.resolve(conn, venues[0], env={ENV: "NEIGHBORS"}).value == "neighbors"


def test_an_unknown_mode_is_refused_by_the_library_and_nothing_is_written(head_db: Database, venues):
    with head_db.connect() as conn, pytest.raises(flags.FlagError, match="use one of connected, pairwise, neighbors"):
        flags.set_override(conn, "diagonal", venues[0])
    assert _overrides(head_db) == []


def test_an_unknown_mode_is_refused_by_the_cli_with_exit_2(head_db: Database, venues):
    result = run(head_db, "set", "diagonal", "--restaurant", str(venues[0]))
    assert result.exit_code == 2
    assert "invalid value 'diagonal' for allocator.adjacency_mode: use one of connected, pairwise, neighbors" in result.output
    assert _overrides(head_db) == []


def test_an_unknown_mode_is_refused_by_the_database_check(head_db: Database, venues):
    with head_db.connect() as conn:
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute("INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) VALUES (%s, %s, 'Diagonal')",
                         (venues[0], KEY))
        assert "feature_flag_overrides_adjacency_mode_check" in str(refused.value)
        conn.rollback()
        # Other flags keep free-form values.
        conn.execute("INSERT INTO feature_flag_overrides (restaurant_id, flag_key, flag_value) VALUES (%s, 'other.flag', 'on')",
                     (venues[0],))


def test_an_unknown_restaurant_is_refused_by_get_set_and_unset(head_db: Database, venues):
    nowhere = uuid.uuid4()
    with head_db.connect() as conn:
        for call in (lambda: flags.resolve(conn, nowhere, env={}), lambda: flags.set_override(conn, "pairwise", nowhere),
                     lambda: flags.unset_override(conn, nowhere)):
            with pytest.raises(flags.UnknownRestaurant, match=f"unknown restaurant {nowhere}"):
                call()
    for args in (["get"], ["set", "pairwise"], ["unset"], ["list"]):
        result = run(head_db, *args, "--restaurant", str(nowhere))
        assert result.exit_code == 2, (args, result.output)
        assert f"unknown restaurant {nowhere}" in result.output
    assert _overrides(head_db) == []


def test_a_malformed_restaurant_id_is_a_usage_error(head_db: Database):
    result = run(head_db, "get", "--restaurant", "not-a-uuid")
    assert result.exit_code == 2 and "not-a-uuid" in result.output


def test_an_unknown_flag_is_refused(head_db: Database):
    result = run(head_db, "get", "--flag", "allocator.nope")
    assert result.exit_code == 2 and "unknown flag 'allocator.nope'" in result.output


def test_cli_rollout_default_then_one_venue_then_all(head_db: Database, venues):
    a, b = venues
    got = json.loads(run(head_db, "get", "--restaurant", str(a), "--json").output)
    assert (got["facts"]["value"], got["facts"]["source"]) == ("connected", "default")

    result = run(head_db, "set", "neighbors", "--restaurant", str(a), "--json")
    assert result.exit_code == 0, result.output
    changed = json.loads(result.output)["facts"]
    assert (changed["before"]["value"], changed["after"]["value"], changed["after"]["source"]) == (
        "connected", "neighbors", "venue override")
    assert json.loads(run(head_db, "get", "--restaurant", str(b), "--json").output)["facts"]["value"] == "connected"

    assert run(head_db, "set", "neighbors").exit_code == 0  # all venues
    assert json.loads(run(head_db, "get", "--restaurant", str(b), "--json").output)["facts"]["source"] == "global override"
    assert run(head_db, "unset", "--restaurant", str(a)).exit_code == 0  # the venue now follows the global row
    assert json.loads(run(head_db, "get", "--restaurant", str(a), "--json").output)["facts"]["source"] == "global override"

    listed = json.loads(run(head_db, "list", "--json").output)
    overrides = next(c for c in listed["checks"] if c["name"] == KEY)["data"]["overrides"]
    assert [(o["restaurant_id"], o["value"]) for o in overrides] == [(None, "neighbors")]


def test_cli_get_reports_the_environment_as_the_source(head_db: Database, venues):
    result = run(head_db, "get", "--restaurant", str(venues[0]), env={ENV: "pairwise"})
    assert result.exit_code == 0
    assert "pairwise for restaurant" in result.output and "(from environment)" in result.output


def test_cli_unset_without_an_override_says_so_and_succeeds(head_db: Database, venues):
    result = run(head_db, "unset", "--restaurant", str(venues[0]))
    assert result.exit_code == 0 and "no override to remove" in result.output


def test_service_role_manages_its_own_venue_only_and_never_the_global_row(head_db: Database, venues):
    a, b = venues
    with head_db.connect() as conn:
        flags.set_override(conn, "neighbors", b)
        act_as(conn, "service_role")
        assert flags.set_override(conn, "pairwise", a).restaurant_id == a
        assert flags.resolve(conn, a, env={}) == flags.Resolution(KEY, a, "pairwise", flags.VENUE)
        assert conn.execute("SELECT restaurant_id FROM feature_flag_overrides").fetchall() == [(a,)]  # not b's
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            flags.set_override(conn, "pairwise")
        assert sqlstate_of(refused) == "42501"
