"""Security of the functions at head: SECURITY DEFINER functions pin a safe search_path and are
executable by exactly the roles that need them, and look-alike objects planted in a schema an
attacker can write (or in pg_temp) are never called or read by them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import BASELINE_ROW_OWNER, Database, Venue, act_as, booking_rows, scalar, slot

# Every SECURITY DEFINER function at head, with the roles (besides its owner) that may execute it.
# confirm_hold_assignment_tx is for service_role only; the functions it calls and the
# retention function (0003a) follow the same rule. A new definer function must be added here, reviewed.
DEFINER_EXECUTE = {
    "apply_booking_state_transition(uuid,booking_status,uuid,text,jsonb)": {"service_role"},
    "assign_tables_atomic_v2(uuid,uuid[],text,boolean,uuid,timestamp with time zone,timestamp with time zone)":
        {"service_role"},
    "confirm_hold_assignment_tx(uuid,uuid,text,boolean,uuid,timestamp with time zone,timestamp with time zone,"
    "text,text,booking_status,text,jsonb,uuid)": {"service_role"},
    "purge_booking_confirmation_results(timestamp with time zone,integer,boolean)": {"reserve_maintenance"},
}
# The online swap's capture (reserve_swap, while a swap is in flight or its window open): a trigger function,
# definer so that a venue's write to allocations can append to a log no platform role may touch; executable by
# nobody but the owner (a trigger function cannot be called directly anyway).
SWAP_CAPTURE_DEFINERS = {"reserve_swap.capture()"}
# The replay the swap (and pg_cron, or `reserve swap follow`) runs as the migration role: an invoker, by nobody else.
SWAP_FUNCTIONS = SWAP_CAPTURE_DEFINERS | {"reserve_swap.replay(integer, boolean)"}
# The invoker functions the RLS policies and the definer functions call: same grants, same pinned path.
INVOKER_EXECUTE = {
    "current_restaurant_id()": {"service_role"},
    "require_restaurant_context()": {"service_role"},
    "set_restaurant_context(uuid)": {"service_role"},
}
PLATFORM_ROLES = ("anon", "authenticated", "service_role")

# Functions this package installs (not extension members), at head: signature, security definer, config.
PACKAGE_FUNCTIONS = """
SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig, p.proowner::regrole::text
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
ORDER BY 1
"""

# Who may execute a function, from its ACL: grantee names ('PUBLIC' for grantee 0), owner excluded.
GRANTEES = """
SELECT ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
             FROM aclexplode(p.proacl) a
             WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner),
       p.proacl IS NULL
FROM pg_proc p
WHERE p.oid = %s::regprocedure
"""


def _search_path(config: list[str] | None) -> list[str] | None:
    for item in config or []:
        name, _, value = item.partition("=")
        if name == "search_path":
            return [part.strip().strip('"') for part in value.split(",")]
    return None


def _functions(conn: psycopg.Connection[Any]) -> dict[str, tuple[bool, list[str] | None, str]]:
    return {sig: (secdef, _search_path(config), owner) for sig, secdef, config, owner in conn.execute(PACKAGE_FUNCTIONS)}


# ---------------------------------------------------------------- the catalog at head


def test_the_security_definer_functions_at_head_are_exactly_the_reviewed_ones(head_db: Database):
    with head_db.connect() as conn:
        everywhere = {row[0] for row in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "WHERE p.prosecdef AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)")}
    assert everywhere == set(DEFINER_EXECUTE) | SWAP_CAPTURE_DEFINERS  # regprocedure qualifies what is off the path


@pytest.mark.parametrize("signature", sorted(SWAP_FUNCTIONS))
def test_the_swap_functions_are_executable_by_no_role_and_pin_search_path(head_db: Database, signature: str):
    with head_db.connect() as conn:
        grantees, default_acl = conn.execute(GRANTEES, (signature,)).fetchone()
        config = conn.execute("SELECT proconfig FROM pg_proc WHERE oid = %s::regprocedure", (signature,)).fetchone()[0]
        assert not default_acl and grantees == []
        assert _search_path(config) == ["pg_catalog", "pg_temp"]
        for role in (*PLATFORM_ROLES, "reserve_maintenance"):
            assert not scalar(conn, "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature))
            assert not scalar(conn, "SELECT has_schema_privilege(%s, 'reserve_swap', 'USAGE')", (role,))


@pytest.mark.parametrize("signature", sorted(DEFINER_EXECUTE | INVOKER_EXECUTE))
def test_every_package_function_pins_search_path_with_pg_temp_last(head_db: Database, signature):
    with head_db.connect() as conn:
        secdef, path, _ = _functions(conn)[signature]
        assert secdef is (signature in DEFINER_EXECUTE)
        assert path is not None, f"{signature} has no pinned search_path (proconfig)"
        assert path[-1] == "pg_temp", f"{signature}: pg_temp must be listed last, got {path}"
        assert "$user" not in path and "public" not in path, path
        # No schema on the path (pg_temp aside) may be writable by a platform role or by PUBLIC.
        for schema in path[:-1]:
            for role in PLATFORM_ROLES:
                assert not scalar(conn, "SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, schema)), (schema, role)
            assert not scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a "
                                    "WHERE n.nspname = %s AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
                              (schema,)), schema


def test_the_package_installs_no_function_outside_the_reviewed_list(head_db: Database):
    with head_db.connect() as conn:
        assert set(_functions(conn)) == set(DEFINER_EXECUTE) | set(INVOKER_EXECUTE)


@pytest.mark.parametrize("signature", sorted(DEFINER_EXECUTE | INVOKER_EXECUTE))
def test_execute_is_granted_to_exactly_the_roles_that_need_it_and_never_to_public(head_db: Database, signature):
    with head_db.connect() as conn:
        grantees, default_acl = conn.execute(GRANTEES, (f"public.{signature}",)).fetchone()
        assert not default_acl, f"{signature} has the default ACL, which lets PUBLIC execute it"
        assert set(grantees) == {**DEFINER_EXECUTE, **INVOKER_EXECUTE}[signature]
        for role in ("anon", "authenticated"):
            assert not scalar(conn, "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, f"public.{signature}"))


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("call", [
    "SELECT public.confirm_hold_assignment_tx(gen_random_uuid(), gen_random_uuid(), 'k')",
    "SELECT public.assign_tables_atomic_v2(gen_random_uuid(), ARRAY[gen_random_uuid()])",
    "SELECT public.apply_booking_state_transition(gen_random_uuid(), 'cancelled')",
    "SELECT public.purge_booking_confirmation_results(now() - interval '30 days', 10, true)",
], ids=["confirm", "assign", "transition", "purge"])
def test_anon_and_authenticated_cannot_execute_a_definer_function(head_db: Database, role, call):
    with head_db.connect() as conn:
        act_as(conn, role)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
            conn.execute(call)


def test_supabase_default_privileges_do_not_widen_execute_on_the_definer_functions(empty_db: Database):
    """Supabase grants anon and authenticated EXECUTE on every new function by default privileges."""
    with empty_db.connect(autocommit=True) as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS "
                     "TO PUBLIC, anon, authenticated, service_role")
    empty_db.upgrade("head")
    with empty_db.connect() as conn:
        for signature, allowed in {**DEFINER_EXECUTE, **INVOKER_EXECUTE}.items():
            grantees, _ = conn.execute(GRANTEES, (f"public.{signature}",)).fetchone()
            assert set(grantees) == allowed, signature


# ---------------------------------------------------------------- one venue, another venue's rows

# Every SECURITY DEFINER function service_role may execute, called with venue A's context on venue B's rows.
# A definer function runs as the table owner, past RLS (and on Supabase service_role bypasses RLS anyway):
# each must check the tenant itself. A new one must be added here.
CROSS_VENUE_CALLS = {
    "apply_booking_state_transition(uuid,booking_status,uuid,text,jsonb)":
        "SELECT public.apply_booking_state_transition(%(b_booking)s, 'cancelled')",
    "assign_tables_atomic_v2(uuid,uuid[],text,boolean,uuid,timestamp with time zone,timestamp with time zone)":
        "SELECT * FROM public.assign_tables_atomic_v2(%(b_booking)s, ARRAY[%(b_table)s]::uuid[])",
    "confirm_hold_assignment_tx(uuid,uuid,text,boolean,uuid,timestamp with time zone,timestamp with time zone,"
    "text,text,booking_status,text,jsonb,uuid)":
        "SELECT * FROM public.confirm_hold_assignment_tx(%(b_hold)s, %(b_booking)s, 'cross-venue')",
}


def _venue_rows(conn: psycopg.Connection[Any], restaurant: uuid.UUID) -> dict[str, list[Any]]:
    """Every row of every tenant table that belongs to ``restaurant``, as JSON, sorted."""
    owners = {**BASELINE_ROW_OWNER, "booking_confirmation_results": "t.restaurant_id",
              "confirmation_cache_events": "t.restaurant_id"}
    return {table: [row[0] for row in conn.execute(
                f"SELECT to_jsonb(t)::text FROM public.{table} t WHERE {owner} = %s ORDER BY 1", (restaurant,))]
            for table, owner in owners.items()}


def test_the_definer_functions_service_role_may_execute_are_exactly_the_ones_checked_across_venues(head_db: Database):
    with head_db.connect() as conn:
        executable = {signature for signature in DEFINER_EXECUTE
                      if scalar(conn, "SELECT has_function_privilege('service_role', %s, 'EXECUTE')",
                                (f"public.{signature}",))}
    assert executable == set(CROSS_VENUE_CALLS)


@pytest.mark.parametrize("signature", sorted(CROSS_VENUE_CALLS), ids=lambda s: s.split("(")[0])
def test_a_definer_function_refuses_another_venues_rows_and_leaves_them_as_they_were(head_db: Database, signature):
    with head_db.connect() as conn:
        mine, theirs = Venue(conn, "A"), Venue(conn, "B")
        booking = theirs.booking(slot(24))
        hold = theirs.hold([theirs.tables[0]], slot(24), booking=booking)
        conn.commit()
        before = _venue_rows(conn, theirs.id)
        act_as(conn, "service_role", mine.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another restaurant"):
            conn.execute(CROSS_VENUE_CALLS[signature], {"b_booking": booking, "b_hold": hold, "b_table": theirs.tables[0]})
        conn.rollback()
        assert _venue_rows(conn, theirs.id) == before


def test_service_role_cannot_run_the_platform_wide_purge(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn)
        act_as(conn, "service_role", venue.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
            conn.execute("SELECT * FROM public.purge_booking_confirmation_results(now() - interval '30 days', 10)")


# ---------------------------------------------------------------- look-alikes planted by an attacker

# Functions and operators that the definer functions use unqualified (resolved through their own
# search_path), planted with the exact argument types so that, were the attacker's schema on the
# path ahead of pg_catalog, the plant would win. Each records its call, then does the real work.
PLANTED_FUNCTIONS = [
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("gen_random_uuid()", "uuid", "pg_catalog.gen_random_uuid()"),
    ("cardinality(a uuid[])", "integer", "pg_catalog.cardinality(a)"),
    ("array_position(a uuid[], b uuid)", "integer", "pg_catalog.array_position(a, b)"),
    ("array_to_string(a uuid[], b text)", "text", "pg_catalog.array_to_string(a, b)"),
    ("unnest(a uuid[])", "SETOF uuid", "pg_catalog.unnest(a)"),
    ("sha256(a bytea)", "bytea", "pg_catalog.sha256(a)"),
    ("encode(a bytea, b text)", "text", "pg_catalog.encode(a, b)"),
    ("convert_to(a text, b name)", "bytea", "pg_catalog.convert_to(a, b)"),
    ("set_config(a text, b text, c boolean)", "text", "pg_catalog.set_config(a, b, c)"),
    ("current_setting(a text, b boolean)", "text", "pg_catalog.current_setting(a, b)"),
    ("btrim(a text)", "text", "pg_catalog.btrim(a)"),
    ("lower(a tstzrange)", "timestamptz", "pg_catalog.lower(a)"),
    ("upper(a tstzrange)", "timestamptz", "pg_catalog.upper(a)"),
    ("tstzrange(a timestamptz, b timestamptz, c text)", "tstzrange", "pg_catalog.tstzrange(a, b, c)"),
    ("to_char(a timestamp, b text)", "text", "pg_catalog.to_char(a, b)"),
    ("to_jsonb(a uuid[])", "jsonb", "pg_catalog.to_jsonb(a)"),
    ("current_restaurant_id()", "uuid", "public.current_restaurant_id()"),
    ("require_restaurant_context()", "uuid", "public.require_restaurant_context()"),
]
PLANTED_OPERATORS = [  # (operator, left type, right type, the real operator)
    ("=", "uuid", "uuid", "OPERATOR(pg_catalog.=)"),
    ("<>", "uuid", "uuid", "OPERATOR(pg_catalog.<>)"),
    ("<=", "timestamptz", "timestamptz", "OPERATOR(pg_catalog.<=)"),
    (">=", "timestamptz", "timestamptz", "OPERATOR(pg_catalog.>=)"),
    ("&&", "tstzrange", "tstzrange", "OPERATOR(pg_catalog.&&)"),
]
# Relations the definer functions read or write, shadowed by views that record every read.
SHADOWED_RELATIONS = [
    "restaurants", "zones", "table_inventory", "table_adjacencies", "bookings", "booking_state_history",
    "allocations", "table_holds", "table_hold_members", "booking_table_assignments",
    "booking_assignment_idempotency", "capacity_outbox", "booking_confirmation_results",
    "confirmation_cache_events", "feature_flag_overrides",
]
ATTACKER_PATH = "pg_temp, attacker, pg_catalog, public"


def _plant_in_attacker_schema(conn: psycopg.Connection[Any]) -> None:
    """As the table owner: schema ``attacker``, writable by authenticated (a low role), and a call log
    anyone may append to. Then, as authenticated: the look-alike functions, operators and relations."""
    conn.execute("CREATE SCHEMA attacker")
    conn.execute("GRANT USAGE, CREATE ON SCHEMA attacker TO authenticated")
    conn.execute("GRANT USAGE ON SCHEMA attacker TO PUBLIC")
    conn.execute("CREATE TABLE attacker.calls (what text NOT NULL, by_role text NOT NULL DEFAULT current_user)")
    conn.execute("GRANT SELECT, INSERT ON attacker.calls TO PUBLIC")
    conn.execute("SET LOCAL ROLE authenticated")
    conn.execute("""
        CREATE FUNCTION attacker.saw(what text) RETURNS boolean LANGUAGE sql VOLATILE
        SET search_path = pg_catalog, pg_temp
        AS $$ INSERT INTO attacker.calls (what) VALUES (what); SELECT false $$""")
    for signature, returns, real in PLANTED_FUNCTIONS:
        name = signature.split("(")[0]
        conn.execute(f"""
            CREATE FUNCTION attacker.{signature} RETURNS {returns} LANGUAGE sql VOLATILE
            SET search_path = pg_catalog, pg_temp
            AS $$ INSERT INTO attacker.calls (what) VALUES ('attacker.{name}'); SELECT {real} $$""")
    for number, (op, left, right, real) in enumerate(PLANTED_OPERATORS):
        conn.execute(f"""
            CREATE FUNCTION attacker.op_{number}(a {left}, b {right}) RETURNS boolean LANGUAGE sql VOLATILE
            SET search_path = pg_catalog, pg_temp
            AS $$ INSERT INTO attacker.calls (what) VALUES ('attacker.{op}'); SELECT a {real} b $$""")
        conn.execute(f"CREATE OPERATOR attacker.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
                     f"FUNCTION = attacker.op_{number})")
    for relation in SHADOWED_RELATIONS:
        conn.execute(f"CREATE VIEW attacker.{relation} AS SELECT NULL::uuid AS id, NULL::uuid AS restaurant_id "
                     f"WHERE attacker.saw('attacker.{relation}')")
    conn.execute("RESET ROLE")


def _plant_in_pg_temp(conn: psycopg.Connection[Any]) -> None:
    """In the caller's own session (as a pooled connection may carry them): temp look-alikes."""
    for relation in SHADOWED_RELATIONS:
        conn.execute(f"CREATE TEMP VIEW {relation} AS SELECT NULL::uuid AS id, NULL::uuid AS restaurant_id "
                     f"WHERE attacker.saw('pg_temp.{relation}')")
    conn.execute("CREATE FUNCTION pg_temp.current_restaurant_id() RETURNS uuid LANGUAGE sql "
                 "AS $$ SELECT NULL::uuid FROM attacker.calls WHERE attacker.saw('pg_temp.current_restaurant_id') $$")
    conn.execute("CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql "
                 "AS $$ SELECT 'epoch'::timestamptz WHERE attacker.saw('pg_temp.now') $$")


def _calls(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return conn.execute("SELECT what, by_role FROM attacker.calls ORDER BY 1, 2").fetchall()


@pytest.fixture
def planted(head_db: Database) -> Iterator[tuple[psycopg.Connection[Any], Venue]]:
    """A venue with tables and the attacker's plants, committed; the connection to use."""
    with head_db.connect() as conn:
        venue = Venue(conn, "Target", tables=4)
        venue.connect_tables(venue.tables[0], venue.tables[1])
        _plant_in_attacker_schema(conn)
        conn.commit()
        yield conn, venue


def test_the_plants_do_hijack_a_caller_whose_search_path_puts_them_first(planted):
    """The control: the same plants catch an unqualified query of the caller itself."""
    conn, venue = planted
    act_as(conn, "service_role", venue.id)
    _plant_in_pg_temp(conn)
    conn.execute("SELECT set_config('search_path', %s, true)", (ATTACKER_PATH,))
    conn.execute("SELECT now(), cardinality(ARRAY[%s]::uuid[]), %s::uuid = %s::uuid",
                 (venue.id, venue.id, venue.id))
    conn.execute("SELECT count(*) FROM bookings")
    assert {what for what, _ in _calls(conn)} >= {
        "attacker.now", "attacker.cardinality", "attacker.=", "pg_temp.bookings"}
    conn.rollback()


def test_definer_functions_never_call_or_read_look_alikes_in_the_callers_search_path(planted):
    conn, venue = planted
    start, end = slot(24)
    booking = venue.booking((start, end))
    hold = venue.hold(venue.tables[:2], (start, end), booking=booking,
                      metadata={"policyVersion": "p1", "selection": {"snapshot": {"adjacency": {"hash": "h1"}}}})
    other = venue.booking(slot(48))
    conn.commit()

    act_as(conn, "service_role", venue.id)
    _plant_in_pg_temp(conn)
    conn.execute("SELECT set_config('search_path', %s, true)", (ATTACKER_PATH,))
    # Every call names its function by schema: resolving the caller's own call is the caller's business.
    rows = conn.execute(
        "SELECT * FROM public.confirm_hold_assignment_tx(p_hold_id => %s, p_booking_id => %s, "
        "p_idempotency_key => 'planted-1', p_require_adjacency => true, p_window_start => %s, p_window_end => %s, "
        "p_expected_policy_version => 'p1', p_expected_adjacency_hash => 'h1', "
        "p_target_status => 'confirmed'::public.booking_status)",
        (hold, booking, start, end)).fetchall()
    assigned = conn.execute(
        "SELECT * FROM public.assign_tables_atomic_v2(%s, ARRAY[%s, %s]::uuid[], 'planted-2', false, NULL, %s, %s)",
        (other, venue.tables[2], venue.tables[3], *slot(48))).fetchall()
    conn.execute("SELECT public.apply_booking_state_transition(%s, 'cancelled'::public.booking_status)", (other,))
    conn.execute("SET LOCAL ROLE reserve_maintenance")  # retention is the platform's, not the venue's
    purged = conn.execute("SELECT * FROM public.purge_booking_confirmation_results("
                          "pg_catalog.now() - interval '30 days', 100, false)").fetchone()
    conn.execute("SET LOCAL ROLE service_role")
    context = conn.execute("SELECT public.current_restaurant_id(), public.require_restaurant_context()").fetchone()

    assert _calls(conn) == []  # nothing planted was called or read, inside any of them
    assert [row[1] for row in rows] == sorted(venue.tables[:2])
    assert [row[0] for row in assigned] == sorted(venue.tables[2:4])
    assert purged == (0, 0, False)
    assert context == (venue.id, venue.id)
    conn.commit()
    conn.execute("DISCARD TEMP")  # the temp look-alikes outlive the transaction; the checks below are unqualified

    assert _calls(conn) == []
    assert booking_rows(conn, booking) == {"allocations": 3, "assignments": 2, "idempotency": 1, "outbox": 2,
                                           "history": 1}
    assert scalar(conn, "SELECT status::text FROM public.bookings WHERE id = %s", (booking,)) == "confirmed"
    assert scalar(conn, "SELECT status::text FROM public.bookings WHERE id = %s", (other,)) == "cancelled"
    assert scalar(conn, "SELECT count(*) FROM public.table_holds WHERE id = %s", (hold,)) == 0
    assert scalar(conn, "SELECT count(*) FROM public.booking_confirmation_results WHERE hold_id = %s", (hold,)) == 1


def test_rls_policies_never_call_look_alikes_of_the_context_functions(planted):
    """The policies call require_restaurant_context() through the catalog, not by name at run time."""
    conn, venue = planted
    act_as(conn, "service_role", venue.id)
    _plant_in_pg_temp(conn)
    conn.execute("SELECT set_config('search_path', %s, true)", (ATTACKER_PATH,))
    seen = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", "table_inventory"))
                        ).fetchone()[0]
    assert seen == 4
    assert _calls(conn) == []
    conn.rollback()


def test_a_plant_that_raises_cannot_break_or_steer_a_confirmation(planted):
    """Plants that raise (instead of recording) in the attacker schema: the confirmation still succeeds."""
    conn, venue = planted
    conn.execute("SET LOCAL ROLE authenticated")
    conn.execute("CREATE OR REPLACE FUNCTION attacker.now() RETURNS timestamptz LANGUAGE plpgsql "
                 "AS $$ BEGIN RAISE EXCEPTION 'planted now() was called'; END $$")
    conn.execute("RESET ROLE")
    booking = venue.booking(slot(72))
    hold = venue.hold([venue.tables[0]], slot(72), booking=booking, expires_in=timedelta(minutes=5))
    conn.commit()
    act_as(conn, "service_role", venue.id)
    conn.execute("SELECT set_config('search_path', 'attacker, pg_catalog, public', true)")
    rows = conn.execute("SELECT * FROM public.confirm_hold_assignment_tx(%s, %s, 'raising')", (hold, booking)).fetchall()
    assert [row[1] for row in rows] == [venue.tables[0]]
    conn.commit()
    assert booking_rows(conn, booking)["allocations"] == 1


def test_a_low_role_cannot_plant_in_the_schemas_of_the_definer_search_path(head_db: Database):
    with head_db.connect() as conn:
        for role in PLATFORM_ROLES:
            act_as(conn, role)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE FUNCTION pg_catalog.planted() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$")
            conn.rollback()
            act_as(conn, role)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"CREATE TABLE public.planted_{uuid.uuid4().hex[:8]} (id int)")
            conn.rollback()
