"""Bad input, everywhere it can come in: what each wrong value gets back (SQLSTATE and message from the
SQL functions; message and exit code from `reserve` and `alembic`), and, for the commands, that nothing was
written (row counts of every table, and the catalog, unchanged after the command ended). docs/RELIABILITY.md
("Bad input") summarizes them.

A failing SQL call needs no such check: PostgreSQL undoes a failed statement whole, so "nothing written" after
it holds whatever the function did; what a caller gets back (SQLSTATE and message) is what is tested there. A
command, by contrast, may commit in several transactions before it fails, so its check means something.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

from reserve.cli import main
from reserve.rollout import alembic_runner
from tests.support import NOW, Database, Venue, act_as, cloned, slot

# ---------------------------------------------------------------- one database for the module, and its state

ALL_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1
"""


def row_counts(db: Database) -> dict[str, int]:
    """Rows in every table of every schema (public, reserve_archive, alembic_version included)."""
    with db.connect() as conn:
        tables = [r[0] for r in conn.execute(ALL_TABLES)]
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def state(db: Database) -> tuple[dict[str, int], Any]:
    """Row counts and the catalog (constraints, indexes, functions, policies, grants, revision)."""
    return row_counts(db), db.snapshot()


@dataclass
class World:
    """Two venues, committed: bookings, holds of every kind the confirm checks, one old evidence row."""

    db: Database
    a: uuid.UUID = field(init=False)
    b: uuid.UUID = field(init=False)
    ids: dict[str, Any] = field(default_factory=dict)

    def build(self) -> World:
        with self.db.connect() as conn:
            va, vb = Venue(conn, "A", tables=3), Venue(conn, "B", tables=2)
            self.a, self.b = va.id, vb.id
            inactive = va.add_table("T-off", active=False)
            a1, a2, b1 = va.booking(slot(24)), va.booking(slot(30)), vb.booking(slot(24))
            live = va.hold([va.tables[0]], slot(24), booking=a1,
                           metadata={"policyVersion": "p1", "selection": {"snapshot": {"adjacency": {"hash": "h1"}}}})
            expired = va.hold([va.tables[1]], slot(24), expires_in=timedelta(minutes=-5))
            of_a2 = va.hold([va.tables[2]], slot(30), booking=a2)
            empty = va.hold([], slot(24))
            free = va.hold([va.tables[1]], slot(26))
            of_b = vb.hold([vb.tables[0]], slot(24), booking=b1)
            conn.execute("INSERT INTO booking_confirmation_results (booking_id, hold_id, restaurant_id, idempotency_key, "
                         "table_ids, assignment_window, metadata, checked_at) VALUES (%s, gen_random_uuid(), %s, 'old', "
                         "ARRAY[%s]::uuid[], tstzrange(%s, %s), %s, now() - interval '40 days')",
                         (a2, va.id, va.tables[2], *slot(30), Jsonb({})))
            conn.commit()
        self.ids = {"a1": a1, "a2": a2, "b1": b1, "live": live, "expired": expired, "of_a2": of_a2, "empty": empty, "free": free,
                    "of_b": of_b, "t0": va.tables[0], "t1": va.tables[1], "t2": va.tables[2], "inactive": inactive,
                    "bt0": vb.tables[0], "a": va.id, "b": vb.id}
        return self


@pytest.fixture(scope="module")
def world(pg_server, templates) -> Iterator[World]:
    """One database at head for the whole module: every bad call is rolled back, and checked to be."""
    with cloned(pg_server, templates["head"]) as database:
        yield World(database).build()


# ---------------------------------------------------------------- SQL functions

CONFIRM = ("SELECT * FROM confirm_hold_assignment_tx(p_hold_id => %(hold)s, p_booking_id => %(booking)s, "
           "p_idempotency_key => 'bad-input', p_window_start => %(start)s, p_window_end => %(end)s, "
           "p_expected_policy_version => %(policy)s, p_expected_adjacency_hash => %(hash)s, "
           "p_target_status => %(status)s)")
ASSIGN = ("SELECT * FROM assign_tables_atomic_v2(p_booking_id => %(booking)s, p_table_ids => %(tables)s, "
          "p_idempotency_key => 'bad-input', p_start_at => %(start)s, p_end_at => %(end)s)")
TRANSITION = "SELECT apply_booking_state_transition(%(booking)s, %(status)s)"
PURGE = "SELECT * FROM purge_booking_confirmation_results(%(cutoff)s, %(batch)s, false)"
START, END = slot(24)


def confirm_params(w: World, **overrides: Any) -> dict[str, Any]:
    return {"hold": w.ids["live"], "booking": w.ids["a1"], "start": None, "end": None, "policy": None, "hash": None,
            "status": None, **overrides}


def assign_params(w: World, **overrides: Any) -> dict[str, Any]:
    return {"booking": w.ids["a2"], "tables": [w.ids["t1"]], "start": None, "end": None, **overrides}


@dataclass(frozen=True)
class SqlCase:
    statement: str
    params: Callable[[World], dict[str, Any]]
    sqlstate: str
    message: str
    # "tenant": service_role with venue A; "none": service_role, no context; "maintenance": the platform's
    # maintenance role (retention); anything else: a raw app.restaurant_id for service_role.
    context: str = "tenant"


SQL_CASES: dict[str, SqlCase] = {
    # confirm_hold_assignment_tx
    "confirm: malformed hold uuid": SqlCase(CONFIRM, lambda w: confirm_params(w, hold="not-a-uuid"), "22P02",
                                            'invalid input syntax for type uuid: "not-a-uuid"'),
    "confirm: malformed booking uuid": SqlCase(CONFIRM, lambda w: confirm_params(w, booking="1234"), "22P02",
                                               'invalid input syntax for type uuid: "1234"'),
    "confirm: NULL hold": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=None), "P0002", r"Hold <NULL> not found"),
    "confirm: unknown hold": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=uuid.UUID(int=1)), "P0002",
                                     r"Hold 00000000-0000-0000-0000-000000000001 not found"),
    "confirm: unknown booking": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=w.ids["free"], booking=uuid.UUID(int=2)),
                                        "P0002", r"Booking 00000000-0000-0000-0000-000000000002 not found"),
    "confirm: window start after end": SqlCase(CONFIRM, lambda w: confirm_params(w, start=END, end=START), "22000",
                                               "Assignment window is missing or empty"),
    "confirm: window start equals end": SqlCase(CONFIRM, lambda w: confirm_params(w, start=START, end=START), "22000",
                                                "Assignment window is missing or empty"),
    "confirm: only window start": SqlCase(CONFIRM, lambda w: confirm_params(w, start=START), "22023",
                                          "Give both p_window_start and p_window_end, or neither"),
    "confirm: only window end": SqlCase(CONFIRM, lambda w: confirm_params(w, end=END), "22023",
                                        "Give both p_window_start and p_window_end, or neither"),
    "confirm: expired hold": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=w.ids["expired"]), "P0001",
                                     "has expired"),
    "confirm: hold of another booking": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=w.ids["of_a2"]), "P0001",
                                                "is bound to another booking"),
    "confirm: hold with no tables": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=w.ids["empty"]), "P0001",
                                            "has no tables"),
    "confirm: hold of another restaurant": SqlCase(CONFIRM, lambda w: confirm_params(w, hold=w.ids["of_b"],
                                                                                     booking=w.ids["b1"]),
                                                   "42501", "Hold belongs to another restaurant"),
    "confirm: stale policy version": SqlCase(CONFIRM, lambda w: confirm_params(w, policy="p0"), "P0003",
                                             "Policy version changed since the hold was made"),
    "confirm: stale adjacency hash": SqlCase(CONFIRM, lambda w: confirm_params(w, hash="h0"), "P0003",
                                             "Adjacency snapshot changed since the hold was made"),
    "confirm: unknown target status": SqlCase(CONFIRM, lambda w: confirm_params(w, status="seated"), "22P02",
                                              'invalid input value for enum booking_status: "seated"'),
    "confirm: forbidden status transition": SqlCase(CONFIRM, lambda w: confirm_params(w, status="completed"), "P0001",
                                                    "Invalid booking status transition from pending to completed"),
    "confirm: restaurant context not a uuid": SqlCase(CONFIRM, confirm_params, "22023",
                                                      "app.restaurant_id is not a valid uuid", context="restaurant-a"),
    # assign_tables_atomic_v2
    "assign: malformed booking uuid": SqlCase(ASSIGN, lambda w: assign_params(w, booking="b-1"), "22P02",
                                              'invalid input syntax for type uuid: "b-1"'),
    "assign: malformed table uuid": SqlCase(ASSIGN, lambda w: assign_params(w, tables=["t-1"]), "22P02",
                                            'invalid input syntax for type uuid: "t-1"'),
    "assign: NULL booking": SqlCase(ASSIGN, lambda w: assign_params(w, booking=None), "22023",
                                    "booking id and a non-empty list of table ids are required"),
    "assign: no tables": SqlCase(ASSIGN, lambda w: assign_params(w, tables=[]), "22023",
                                 "booking id and a non-empty list of table ids are required"),
    "assign: a NULL table id": SqlCase(ASSIGN, lambda w: assign_params(w, tables=[w.ids["t1"], None]), "22023",
                                       "booking id and a non-empty list of table ids are required"),
    "assign: unknown booking": SqlCase(ASSIGN, lambda w: assign_params(w, booking=uuid.UUID(int=3)), "P0002",
                                       r"Booking 00000000-0000-0000-0000-000000000003 not found"),
    "assign: unknown table": SqlCase(ASSIGN, lambda w: assign_params(w, tables=[uuid.UUID(int=4)]), "P0002",
                                     r"Table 00000000-0000-0000-0000-000000000004 not found"),
    "assign: table of another restaurant": SqlCase(ASSIGN, lambda w: assign_params(w, tables=[w.ids["bt0"]]), "22023",
                                                   "belongs to another restaurant"),
    "assign: inactive table": SqlCase(ASSIGN, lambda w: assign_params(w, tables=[w.ids["inactive"]]), "22023",
                                      "is inactive"),
    "assign: booking of another restaurant": SqlCase(ASSIGN, lambda w: assign_params(w, booking=w.ids["b1"],
                                                                                     tables=[w.ids["bt0"]]),
                                                     "42501", "Booking belongs to another restaurant"),
    "assign: window start after end": SqlCase(ASSIGN, lambda w: assign_params(w, start=END, end=START), "22000",
                                              "Assignment window is missing or empty"),
    "assign: only window end": SqlCase(ASSIGN, lambda w: assign_params(w, end=END), "22023",
                                       "Give both window bounds or neither"),
    # the tenant context
    "set_restaurant_context: malformed uuid": SqlCase("SELECT set_restaurant_context(%(value)s)",
                                                      lambda w: {"value": "restaurant-a"}, "22P02",
                                                      'invalid input syntax for type uuid: "restaurant-a"'),
    "set_restaurant_context: empty string": SqlCase("SELECT set_restaurant_context(%(value)s)", lambda w: {"value": ""},
                                                    "22P02", 'invalid input syntax for type uuid: ""'),
    "current_restaurant_id: context not a uuid": SqlCase("SELECT current_restaurant_id()", lambda w: {}, "22023",
                                                         "app.restaurant_id is not a valid uuid", context="12345"),
    "require_restaurant_context: no context": SqlCase("SELECT require_restaurant_context()", lambda w: {}, "42501",
                                                      "Restaurant context is required", context="none"),
    "RLS read: context not a uuid": SqlCase("SELECT count(*) FROM bookings", lambda w: {}, "22023",
                                            "app.restaurant_id is not a valid uuid", context="not-a-uuid"),
    # apply_booking_state_transition
    "transition: NULL booking": SqlCase(TRANSITION, lambda w: {"booking": None, "status": "cancelled"}, "22023",
                                        "booking id and target status are required"),
    "transition: unknown status": SqlCase(TRANSITION, lambda w: {"booking": w.ids["a1"], "status": "gone"}, "22P02",
                                          'invalid input value for enum booking_status: "gone"'),
    "transition: forbidden move": SqlCase(TRANSITION, lambda w: {"booking": w.ids["a1"], "status": "no_show"}, "P0001",
                                          "Invalid booking status transition from pending to no_show"),
    # purge_booking_confirmation_results
    "purge: zero batch size": SqlCase(PURGE, lambda w: {"cutoff": NOW - timedelta(days=30), "batch": 0}, "22023",
                                      "batch size must be a positive number of rows, got 0", context="maintenance"),
    "purge: negative batch size": SqlCase(PURGE, lambda w: {"cutoff": NOW - timedelta(days=30), "batch": -5}, "22023",
                                          "batch size must be a positive number of rows, got -5", context="maintenance"),
    "purge: NULL batch size": SqlCase(PURGE, lambda w: {"cutoff": NOW - timedelta(days=30), "batch": None}, "22023",
                                      "batch size must be a positive number of rows, got NULL", context="maintenance"),
    "purge: NULL cutoff": SqlCase(PURGE, lambda w: {"cutoff": None, "batch": 10}, "22023", "a cutoff is required",
                                  context="maintenance"),
    "purge: cutoff less than a day ago": SqlCase(PURGE, lambda w: {"cutoff": NOW - timedelta(hours=2), "batch": 10},
                                                 "22023", "is less than one day in the past", context="maintenance"),
}


@pytest.mark.parametrize("case", list(SQL_CASES.values()), ids=list(SQL_CASES))
def test_bad_sql_input_gets_its_sqlstate_and_message(world: World, case: SqlCase):
    with world.db.connect() as conn:
        if case.context == "maintenance":
            act_as(conn, "reserve_maintenance")
        else:
            act_as(conn, "service_role", world.a if case.context == "tenant" else None)
        if case.context not in ("tenant", "none", "maintenance"):
            conn.execute("SELECT set_config('app.restaurant_id', %s, true)", (case.context,))
        params = case.params(world)
        if "tables" in params and params["tables"] is not None and params["tables"] and isinstance(
                params["tables"][0], str):
            statement = case.statement.replace("%(tables)s", "%(tables)s::text[]::uuid[]")
        else:
            statement = case.statement.replace("%(tables)s", "%(tables)s::uuid[]")
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(statement, params)
        conn.rollback()
    assert raised.value.sqlstate == case.sqlstate, str(raised.value)
    assert re.search(case.message, raised.value.diag.message_primary or ""), str(raised.value)


def test_the_same_call_with_good_input_succeeds_in_this_world(world: World):
    """The control: the errors above come from the bad values, not from a broken world."""
    with world.db.connect() as conn:
        act_as(conn, "service_role", world.a)
        rows = conn.execute(CONFIRM, confirm_params(world, policy="p1", hash="h1")).fetchall()
        assert [row[1] for row in rows] == [world.ids["t0"]]
        conn.rollback()


# ---------------------------------------------------------------- the reserve command


@dataclass(frozen=True)
class CliCase:
    args: Callable[[World], list[str]]
    exit_code: int
    message: str
    env: Callable[[World], str | None] | None = None  # DATABASE_URL; default: the world's database


def _url(w: World) -> str:
    return w.db.url.render_as_string(hide_password=False)


UNKNOWN = str(uuid.UUID(int=99))
CLI_CASES: dict[str, CliCase] = {
    # --restaurant (a venue id)
    "flags set --restaurant not-a-uuid": CliCase(lambda w: ["flags", "set", "connected", "--restaurant", "not-a-uuid"],
                                                 2, "Invalid value for '--restaurant': 'not-a-uuid' is not a valid UUID"),
    "flags get --restaurant 1234": CliCase(lambda w: ["flags", "get", "--restaurant", "1234"], 2,
                                           "'1234' is not a valid UUID"),
    "flags list --restaurant ''": CliCase(lambda w: ["flags", "list", "--restaurant", ""], 2,
                                          "'' is not a valid UUID"),
    "flags unset --restaurant x": CliCase(lambda w: ["flags", "unset", "--restaurant", "x"], 2,
                                          "'x' is not a valid UUID"),
    "flags list --restaurant-id (no such option)": CliCase(lambda w: ["flags", "list", "--restaurant-id", "x"], 2,
                                                           "No such option '--restaurant-id'. Did you mean '--restaurant'?"),
    "flags set --restaurant <unknown venue>": CliCase(lambda w: ["flags", "set", "pairwise", "--restaurant", UNKNOWN], 2,
                                                      f"unknown restaurant {UNKNOWN}: no restaurant has this id"),
    "flags unset --restaurant <unknown venue>": CliCase(lambda w: ["flags", "unset", "--restaurant", UNKNOWN], 2,
                                                        f"unknown restaurant {UNKNOWN}"),
    # flag values and keys
    "flags set bogus": CliCase(lambda w: ["flags", "set", "bogus"], 2,
                               "invalid value 'bogus' for allocator.adjacency_mode: use one of connected, pairwise, "
                               "neighbors"),
    "flags set '' --restaurant <venue>": CliCase(lambda w: ["flags", "set", "", "--restaurant", str(w.a)], 2,
                                                 "invalid value '' for allocator.adjacency_mode"),
    "flags set pairwise --flag nope": CliCase(lambda w: ["flags", "set", "pairwise", "--flag", "nope"], 2,
                                              "unknown flag 'nope': known flags are allocator.adjacency_mode"),
    "flags get --flag nope": CliCase(lambda w: ["flags", "get", "--flag", "nope"], 2, "unknown flag 'nope'"),
    # revisions
    "preflight --target 9999_nope": CliCase(lambda w: ["preflight", "--target", "9999_nope"], 2,
                                            "unknown revision '9999_nope'; known: 0001_baseline"),
    "preflight --target ''": CliCase(lambda w: ["preflight", "--target", ""], 2, "unknown revision ''"),
    "preflight --target 0003 (ambiguous)": CliCase(lambda w: ["preflight", "--target", "0003"], 2,
                                                   "unknown revision '0003'"),
    "preflight --long-transaction-seconds -1": CliCase(lambda w: ["preflight", "--long-transaction-seconds", "-1"], 2,
                                                       "-1.0 is not in the range x>=0"),
    # retention
    "retention --batch-size -5": CliCase(lambda w: ["retention", "--older-than", "30d", "--batch-size", "-5"], 2,
                                         "batch size must be a positive number of rows, got -5"),
    "retention --batch-size 0": CliCase(lambda w: ["retention", "--older-than", "30d", "--batch-size", "0"], 2,
                                        "batch size must be a positive number of rows, got 0"),
    "retention --batch-size abc": CliCase(lambda w: ["retention", "--older-than", "30d", "--batch-size", "abc"], 2,
                                          "'abc' is not a valid integer"),
    "retention --older-than bogus": CliCase(lambda w: ["retention", "--older-than", "bogus"], 2,
                                            "invalid duration 'bogus': invalid input syntax for type interval"),
    "retention --older-than 0d": CliCase(lambda w: ["retention", "--older-than", "0d"], 2,
                                         "invalid duration '0d': it must be longer than zero"),
    "retention --older-than 12h": CliCase(lambda w: ["retention", "--older-than", "12h"], 2,
                                          "is too short: evidence younger than a day is never purged"),
    "retention without --older-than": CliCase(lambda w: ["retention", "--dry-run"], 2,
                                              "--older-than is required (or --schedule / --unschedule)"),
    "retention --schedule and --unschedule": CliCase(lambda w: ["retention", "--schedule", "* * * * *",
                                                                "--unschedule"], 2, "not both"),
    "retention --schedule --batch-size 0": CliCase(lambda w: ["retention", "--schedule", "* * * * *",
                                                              "--batch-size", "0"], 2,
                                                   "batch size must be a positive number of rows, got 0"),
    "retention --pause -1": CliCase(lambda w: ["retention", "--older-than", "30d", "--pause", "-1"], 2,
                                    "-1.0 is not in the range x>=0"),
    # rehearse
    "rehearse --rows 10": CliCase(lambda w: ["rehearse", "--rows", "10", "--use-database-url"], 2,
                                  "Invalid value for '--rows': 10 is not in the range x>=1000"),
    "rehearse --standby --use-database-url": CliCase(lambda w: ["rehearse", "--standby", "--use-database-url"], 2,
                                                     "it cannot make a replica of DATABASE_URL's server"),
    "rehearse --rows 0": CliCase(lambda w: ["rehearse", "--rows", "0"], 2, "0 is not in the range x>=1000"),
    "rehearse --rows -5": CliCase(lambda w: ["rehearse", "--rows", "-5"], 2, "-5 is not in the range x>=1000"),
    "rehearse --rows abc": CliCase(lambda w: ["rehearse", "--rows", "abc"], 2, "'abc' is not a valid integer"),
    "rehearse --rows 1e6": CliCase(lambda w: ["rehearse", "--rows", "1e6"], 2, "'1e6' is not a valid integer"),
    # monitor
    "monitor (neither --once nor --serve)": CliCase(lambda w: ["monitor"], 2, "give exactly one of --once or --serve PORT"),
    "monitor --once --serve 0": CliCase(lambda w: ["monitor", "--once", "--serve", "0"], 2,
                                        "give exactly one of --once or --serve PORT"),
    "monitor --serve 70000": CliCase(lambda w: ["monitor", "--serve", "70000"], 2, "70000 is not in the range 0<=x<=65535"),
    "monitor --once --probe-runs -1": CliCase(lambda w: ["monitor", "--once", "--probe-runs", "-1"], 2,
                                              "-1 is not in the range x>=0"),
    "monitor --serve 0 --min-interval -1": CliCase(lambda w: ["monitor", "--serve", "0", "--min-interval", "-1"], 2,
                                                   "-1.0 is not in the range x>=0"),
    # files
    "snapshot -o <missing directory>": CliCase(lambda w: ["snapshot", "-o", "no/such/dir/s.txt"], 2,
                                               "cannot write no/such/dir/s.txt: No such file or directory"),
    "diff <missing files>": CliCase(lambda w: ["diff", "nope-a.txt", "nope-b.txt"], 2,
                                    "File 'nope-a.txt' does not exist"),
    # DATABASE_URL
    "DATABASE_URL unset": CliCase(lambda w: ["verify"], 2, "DATABASE_URL is not set", env=lambda w: ""),
    "DATABASE_URL not a URL": CliCase(lambda w: ["verify"], 2, "DATABASE_URL is not a valid database URL",
                                      env=lambda w: "not a url"),
    "DATABASE_URL port not a number": CliCase(lambda w: ["preflight"], 2, "DATABASE_URL is not a valid database URL",
                                              env=lambda w: "postgresql://u:pw@127.0.0.1:abc/db"),
    "DATABASE_URL of another database kind": CliCase(lambda w: ["verify"], 2,
                                                     "DATABASE_URL must be a postgresql:// URL, not mysql://",
                                                     env=lambda w: "mysql://u@h/db"),
}


@pytest.mark.parametrize("case", list(CLI_CASES.values()), ids=list(CLI_CASES))
def test_bad_cli_input_exits_with_a_clear_message_and_writes_nothing(world: World, case: CliCase, tmp_path: Path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = state(world.db)
    env = {"DATABASE_URL": case.env(world) if case.env else _url(world)}
    result = CliRunner().invoke(main, case.args(world), env=env)
    assert result.exit_code == case.exit_code, result.output
    assert case.message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert state(world.db) == before
    assert list(tmp_path.iterdir()) == []  # no file, no artifacts/ directory


def test_flag_values_are_normalized_not_refused(world: World):
    """'CONNECTED' and ' connected' are the value 'connected', trimmed and lower-cased (documented behaviour)."""
    env = {"DATABASE_URL": _url(world)}
    result = CliRunner().invoke(main, ["flags", "set", " CONNECTED", "--restaurant", str(world.a), "--json"], env=env)
    assert result.exit_code == 0, result.output
    with world.db.connect() as conn:
        stored = conn.execute("SELECT flag_value FROM feature_flag_overrides WHERE restaurant_id = %s",
                              (world.a,)).fetchall()
        conn.execute("DELETE FROM feature_flag_overrides WHERE restaurant_id = %s", (world.a,))
        conn.commit()
    assert stored == [("connected",)]


# ---------------------------------------------------------------- alembic


@dataclass(frozen=True)
class AlembicCase:
    args: list[str]
    message: str
    start: str = "head"  # the template the database is cloned from: "head" (the module's world) or "baseline"


ALEMBIC_CASES: dict[str, AlembicCase] = {
    "upgrade to an unknown revision": AlembicCase(["upgrade", "9999_nope"],
                                                  "Can't locate revision identified by '9999_nope'"),
    "downgrade to an unknown revision": AlembicCase(["downgrade", "9999_nope"],
                                                    "Can't locate revision identified by '9999_nope'"),
    "-x lock_timeout not a duration": AlembicCase(["-x", "lock_timeout=soon", "upgrade", "head"],
                                                  'invalid -x lock_timeout: invalid value for parameter "lock_timeout"'),
    "-x swap_lock_attempts not a number (downgrade)": AlembicCase(["-x", "swap_lock_attempts=abc", "downgrade", "-1"],
                                                                  "invalid -x swap_lock_attempts='abc': give a number"),
    "-x swap_lock_pause not a number": AlembicCase(["-x", "swap_lock_pause=x", "downgrade", "-1"],
                                                   "invalid -x swap_lock_pause='x'"),
    "-x swap_lock_timeout not a duration": AlembicCase(["-x", "swap_lock_timeout=2 seconds", "downgrade", "-1"],
                                                       "invalid -x swap_lock_timeout='2 seconds': give a PostgreSQL "
                                                       "duration"),
    "-x swap_lock_attempts=0": AlembicCase(["-x", "swap_lock_attempts=0", "downgrade", "-1"],
                                           "swap_lock_attempts must be >= 1"),
    "-x swap_lock_attempts not a number (upgrade from 0001)": AlembicCase(
        ["-x", "swap_lock_attempts=five", "upgrade", "head"], "invalid -x swap_lock_attempts='five'",
        start="baseline"),
}


@pytest.mark.parametrize("case", list(ALEMBIC_CASES.values()), ids=list(ALEMBIC_CASES))
def test_bad_alembic_input_fails_before_anything_changes(world: World, clone, templates, case: AlembicCase):
    """At head in the module's world; below it in a database of its own (the world is never migrated)."""
    target = world.db if case.start == "head" else clone(templates[case.start])
    before = state(target)
    result = alembic_runner.run_cli(target.url, *case.args, timeout=120)
    assert result.returncode == 255, result.stdout + result.stderr  # alembic's exit code for a CommandError
    assert case.message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert state(target) == before  # no revision applied, no reserve_pending_* index built


BAD_X_OPTIONS = ["lock_timeout=soon", "statement_timeout=1 hour", "swap_lock_timeout=x", "swap_lock_attempts=many"]


@pytest.mark.parametrize("option", BAD_X_OPTIONS)
def test_bad_x_options_fail_the_offline_script_too(option: str):
    result = alembic_runner.run_cli(make_url("postgresql://u@127.0.0.1:1/db"), "-x", option, "upgrade", "head", "--sql",
                         timeout=120)
    assert result.returncode == 255 and f"invalid -x {option.split('=')[0]}" in result.stderr, result.stderr
    assert "BEGIN;" not in result.stdout
