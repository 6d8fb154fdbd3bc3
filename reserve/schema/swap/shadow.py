"""The shadow: a copy of allocations' definition in schema reserve_swap, with the target guard once it is filled.

Everything is read from the live table's catalog, so that after the exchange
pg_dump prints what the in-place method leaves: the same columns (order,
types, defaults, NOT NULL, collation, storage, compression, statistics
targets, options, comments, grants), the same CHECK and key constraints under
the same names (NOT VALID ones left not valid; its foreign keys once it is
filled), the same indexes under the same names and tablespaces (minus what
the swap drops, plus what it adds), the index it is clustered on, RLS flags,
policies, grants, table and TOAST options, tablespace, replica identity,
owner and every comment. Because the shadow lives in its own schema, its
indexes carry their final names from the start: the exchange moves tables
between schemas and renames nothing. What it cannot copy makes the swap
refuse first (reserve.schema.swap.refusals); what changes on either table
afterwards stops the exchange (reserve.schema.swap.likeness).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alembic.util import CommandError
from psycopg.sql import Literal

from reserve.schema import guards
from reserve.schema.session import qualified_names
from reserve.schema.swap.state import LIVE, SCHEMA, SHADOW


@dataclass(frozen=True)
class Target:
    """What the shadow carries instead of the live table's guard: the guard it adds, the constraint and
    indexes of the live table it leaves out, and the indexes it adds (as CREATE INDEX for ``{table}``)."""

    guard: guards.Guard
    drop_constraints: tuple[str, ...]
    drop_indexes: tuple[str, ...]
    add_indexes: tuple[str, ...]


def for_direction(direction: str, new_guard: guards.Guard) -> Target:
    """Upgrade: allocations_no_overlap, without the old guard and its redundant index; downgrade: the reverse."""
    redundant = guards.redundant_index_sql(guards.REDUNDANT_INDEX).replace(guards.TABLE, "{table}")
    if direction == "upgrade":
        return Target(new_guard, (guards.OLD_GUARD.name,), (guards.REDUNDANT_INDEX,), ())
    return Target(guards.OLD_GUARD, (new_guard.name,), (), (redundant,))


@dataclass(frozen=True)
class Definition:
    """The shadow's DDL in two parts: ``table`` creates it with no index at all (the bulk copy appends, and
    nothing may refuse a stale copy); once it is filled, its primary key (``primary_key``: the replay finds rows
    by id), then ``after_fill``: its other unique and exclusion constraints and indexes, and a replica identity
    that names one of them. One bulk build each, not a row at a time. The target guard comes last, on its own
    (reserve.schema.swap.online.add_guard)."""

    table: list[str]
    after_fill: list[str]


def statements(session: Any, target: Target) -> Definition:
    """The DDL that creates the shadow (in the current transaction: it sets a local search_path)."""
    qualified_names(session)
    tablespace = _tablespace(session, LIVE)
    table = [f"CREATE TABLE {SHADOW} (LIKE {LIVE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
             f"INCLUDING COMPRESSION INCLUDING COMMENTS){f' TABLESPACE {tablespace}' if tablespace else ''}"]
    # A NOT VALID check is enforced on every row inserted: the legacy rows it lets stay would stop the copy.
    # It is added again once the shadow is filled, NOT VALID, as the live table has it.
    not_valid = session.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
        "AND contype = 'c' AND NOT convalidated ORDER BY conname", (LIVE,)).fetchall()
    table += [f'ALTER TABLE {SHADOW} DROP CONSTRAINT "{name}"' for name, _ in not_valid]
    after_fill = [f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition} NOT VALID'
                  for name, definition in not_valid]
    for name, definition, space in session.execute(
            "SELECT conname, pg_get_constraintdef(oid), "
            "       (SELECT spcname FROM pg_class i JOIN pg_tablespace s ON s.oid = i.reltablespace "
            "        WHERE i.oid = conindid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('u', 'x') ORDER BY conname", (LIVE,)).fetchall():
        if name not in target.drop_constraints:
            after_fill += _in_tablespace(f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition}', space)
    for name, definition, space in session.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), s.spcname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace "
            "WHERE i.indrelid = %s::regclass AND NOT EXISTS "
            "  (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) "
            "ORDER BY 1", (LIVE,)).fetchall():
        if name not in target.drop_indexes:
            after_fill += _in_tablespace(definition.replace(f" ON {LIVE} ", f" ON {SHADOW} ", 1), space)
    after_fill.append(f"SELECT set_config('default_tablespace', {_literal_sql(_setting(session))}, true)")
    after_fill += [index.format(table=SHADOW) for index in target.add_indexes]
    settings, identity = _table_settings(session)
    table += settings + _column_settings(session)
    table += _policies(session)
    return Definition(table, after_fill + identity + _cluster(session, target))


def primary_key(session: Any) -> list[str]:
    """The statement that builds the live table's primary key on the shadow (the swap neither drops nor adds one),
    in the tablespace the live one's index is in."""
    qualified_names(session)
    out = []
    for name, definition, space in session.execute(
            "SELECT conname, pg_get_constraintdef(k.oid), s.spcname FROM pg_constraint k "
            "JOIN pg_class i ON i.oid = k.conindid LEFT JOIN pg_tablespace s ON s.oid = i.reltablespace "
            "WHERE conrelid = %s::regclass AND contype = 'p'", (LIVE,)).fetchall():
        out += _in_tablespace(f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition}', space)
    return out + [f"SELECT set_config('default_tablespace', {_literal_sql(_setting(session))}, true)"]


def comments(session: Any) -> list[str]:
    """COMMENT statements for the live table's constraints, indexes and policies that the shadow has too (its
    table and column comments come with it: LIKE … INCLUDING COMMENTS): run once it is filled and keyed."""
    qualified_names(session)
    return [f"COMMENT ON {kind} {name} IS {comment}" for kind, name, comment in session.execute(
        "SELECT 'CONSTRAINT', quote_ident(k.conname) || ' ON ' || %(s)s, quote_literal(d.description) "
        "FROM pg_constraint k JOIN pg_description d ON d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass "
        "WHERE k.conrelid = %(l)s::regclass "
        "  AND EXISTS (SELECT 1 FROM pg_constraint o WHERE o.conrelid = %(s)s::regclass AND o.conname = k.conname) "
        "UNION ALL SELECT 'INDEX', %(schema)s || '.' || quote_ident(c.relname), quote_literal(d.description) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0 "
        "WHERE i.indrelid = %(l)s::regclass AND EXISTS (SELECT 1 FROM pg_index o JOIN pg_class oc "
        "  ON oc.oid = o.indexrelid WHERE o.indrelid = %(s)s::regclass AND oc.relname = c.relname) "
        "UNION ALL SELECT 'POLICY', quote_ident(p.polname) || ' ON ' || %(s)s, quote_literal(d.description) "
        "FROM pg_policy p JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_policy'::regclass "
        "WHERE p.polrelid = %(l)s::regclass ORDER BY 1, 2",
        {"l": LIVE, "s": SHADOW, "schema": SCHEMA}).fetchall()]


def referenced_tables(session: Any, table: str) -> list[str]:
    """The tables ``table``'s foreign keys reference, schema-qualified: what adding or dropping those keys locks."""
    return [row[0] for row in session.execute(
        "SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE k.conrelid = to_regclass(%s) AND k.contype = 'f' ORDER BY 1", (table,)).fetchall()]


def foreign_keys(session: Any) -> list[tuple[str, str, bool]]:
    """(name, definition, validated) of the live table's own foreign keys, which the shadow gets after its
    backfill (added NOT VALID, then validated in one pass, unless the live one is NOT VALID): checked row by row
    during the copy they would cost a quarter of it, and every row the shadow holds is a committed row of the
    live table, whose keys hold."""
    qualified_names(session)
    return [tuple(row) for row in session.execute(
        "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE conrelid = %s::regclass "
        "AND contype = 'f' ORDER BY conname", (LIVE,)).fetchall()]


def grants(session: Any) -> list[str]:
    """The live table's grants on the shadow, exactly: after the shadow exists (default privileges may have
    granted it more), and again before each exchange (a grant made since the build is carried, as the in-place
    method keeps it), revoke every grant it has, then grant what the live table grants."""
    return [f"REVOKE ALL ON {SHADOW} FROM PUBLIC", *revoke_inherited_grants(session), *_grants(session)]


def _table_settings(session: Any) -> tuple[list[str], list[str]]:
    """(what the shadow gets when it is created, its replica identity: after its indexes, one of which it may name)."""
    rls, force, identity, owner, comment = session.execute(
        "SELECT relrowsecurity, relforcerowsecurity, relreplident, relowner::regrole::text, "
        "quote_literal(obj_description(oid, 'pg_class')) FROM pg_class WHERE oid = %s::regclass", (LIVE,)).fetchone()
    options = _options(session, LIVE)
    out, identity_sql = [], []
    if rls:
        out.append(f"ALTER TABLE {SHADOW} ENABLE ROW LEVEL SECURITY")
    if force:
        out.append(f"ALTER TABLE {SHADOW} FORCE ROW LEVEL SECURITY")
    if options:
        out.append(f"ALTER TABLE {SHADOW} SET ({', '.join(options)})")
    if identity == "f":
        out.append(f"ALTER TABLE {SHADOW} REPLICA IDENTITY FULL")
    elif identity == "n":
        out.append(f"ALTER TABLE {SHADOW} REPLICA IDENTITY NOTHING")
    elif identity == "i":
        index = session.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                "WHERE i.indrelid = %s::regclass AND i.indisreplident", (LIVE,)).fetchone()[0]
        identity_sql.append(f'ALTER TABLE {SHADOW} REPLICA IDENTITY USING INDEX "{index}"')
    if comment is not None:
        out.append(f"COMMENT ON TABLE {SHADOW} IS {comment}")  # quoted by quote_literal
    current = session.execute("SELECT current_user::regrole::text").fetchone()[0]
    if owner != current:
        out.append(f"ALTER TABLE {SHADOW} OWNER TO {owner}")
    return out, identity_sql


def column_options(attribute: str) -> str:
    """SQL for a column's options (n_distinct…) as an array, in order, but pg_attver, which a server build stamps
    on every column by itself (setting it is ignored, pg_dump does not print it). For a query with parameters."""
    return (f"ARRAY(SELECT o FROM unnest({attribute}.attoptions) o WHERE o NOT LIKE 'pg\\_attver=%%' "
            "ORDER BY o)")


def _options(session: Any, table: str) -> list[str]:
    """The table's storage options and its TOAST table's (``toast.`` prefixed), in order."""
    return session.execute(
        "SELECT ARRAY(SELECT o FROM unnest(c.reloptions) o ORDER BY o) "
        "    || ARRAY(SELECT 'toast.' || o FROM unnest(t.reloptions) o ORDER BY o) "
        "FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = %s::regclass",
        (table,)).fetchone()[0]


def options_to_carry(session: Any) -> list[str]:
    """The live table's options on the shadow, when they differ (autovacuum tuned in the window, say): set again
    before each exchange, as the in-place method keeps them."""
    live, shadow = _options(session, LIVE), _options(session, SHADOW)
    if live == shadow:
        return []
    names = [option.split("=", 1)[0] for option in shadow]
    return ([f"ALTER TABLE {SHADOW} RESET ({', '.join(names)})"] if names else []) + (
        [f"ALTER TABLE {SHADOW} SET ({', '.join(live)})"] if live else [])


def _column_settings(session: Any) -> list[str]:
    """Statistics targets and column options (n_distinct…), which LIKE does not copy."""
    out = []
    for column, target, options in session.execute(
            f"SELECT quote_ident(a.attname), NULLIF(a.attstattarget, -1), {column_options('a')} FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (LIVE,)).fetchall():
        if target is not None:
            out.append(f"ALTER TABLE {SHADOW} ALTER COLUMN {column} SET STATISTICS {target}")
        if options:
            out.append(f"ALTER TABLE {SHADOW} ALTER COLUMN {column} SET ({', '.join(options)})")
    return out


def _cluster(session: Any, target: Target) -> list[str]:
    """CLUSTER ON the index the live table is marked clustered on, when the shadow keeps it."""
    return [f'ALTER TABLE {SHADOW} CLUSTER ON "{name}"' for (name,) in session.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = %s::regclass AND i.indisclustered", (LIVE,)).fetchall()
        if name not in target.drop_indexes + target.drop_constraints]


def _tablespace(session: Any, table: str) -> str | None:
    (name,) = session.execute("SELECT quote_ident(s.spcname) FROM pg_class c JOIN pg_tablespace s "
                              "ON s.oid = c.reltablespace WHERE c.oid = %s::regclass", (table,)).fetchone() or (None,)
    return name


def _setting(session: Any) -> str:
    return session.execute("SELECT current_setting('default_tablespace')").fetchone()[0]


def _literal_sql(text: str) -> str:
    return Literal(text).as_string(None)


def _in_tablespace(statement: str, tablespace: str | None) -> list[str]:
    """``statement`` building an index in ``tablespace`` (None: the database's default), as pg_dump does it:
    default_tablespace set for the transaction (the statements that build indexes print no tablespace)."""
    return [f"SELECT set_config('default_tablespace', {_literal_sql(tablespace or '')}, true)", statement]


def _policies(session: Any) -> list[str]:
    out = []
    for name, permissive, command, roles, using, check in session.execute(
            "SELECT polname, polpermissive, polcmd, "
            "       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE quote_ident(r::regrole::text) END "
            "             FROM unnest(polroles) r), "
            "       pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
            "FROM pg_policy WHERE polrelid = %s::regclass ORDER BY polname", (LIVE,)).fetchall():
        verb = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}[command]
        clauses = (f" USING ({using})" if using else "") + (f" WITH CHECK ({check})" if check else "")
        out.append(f'CREATE POLICY "{name}" ON {SHADOW} AS {"PERMISSIVE" if permissive else "RESTRICTIVE"} '
                   f"FOR {verb} TO {', '.join(roles)}{clauses}")
    return out


_GRANTEE = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END"


def _grants(session: Any) -> list[str]:
    """GRANT statements for what the live table grants, table and column privileges."""
    out = []
    for grantee, privilege, grantable in session.execute(
            f"SELECT {_GRANTEE}, a.privilege_type, a.is_grantable "
            "FROM pg_class c, aclexplode(COALESCE(c.relacl, acldefault('r', c.relowner))) a "
            "WHERE c.oid = %s::regclass AND a.grantee <> c.relowner ORDER BY 1, 2", (LIVE,)).fetchall():
        out.append(f"GRANT {privilege} ON {SHADOW} TO {grantee}{' WITH GRANT OPTION' if grantable else ''}")
    for column, grantee, privilege in session.execute(
            f"SELECT quote_ident(t.attname), {_GRANTEE}, a.privilege_type "
            "FROM pg_attribute t, aclexplode(t.attacl) a WHERE t.attrelid = %s::regclass AND t.attacl IS NOT NULL "
            "ORDER BY 1, 2, 3", (LIVE,)).fetchall():
        out.append(f"GRANT {privilege} ({column}) ON {SHADOW} TO {grantee}")
    return out


def revoke_inherited_grants(session: Any) -> list[str]:
    """REVOKE statements for every non-owner grantee the shadow has, on the table or a column (from default
    privileges when it is new; before an exchange, what the live table no longer grants): REVOKE on the table
    revokes its column privileges too."""
    return [f"REVOKE ALL ON {SHADOW} FROM {grantee}" for (grantee,) in session.execute(
        "SELECT DISTINCT quote_ident(a.grantee::regrole::text) FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = %(t)s::regclass AND a.grantee NOT IN (0, c.relowner) "
        "UNION SELECT quote_ident(a.grantee::regrole::text) FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, "
        "  aclexplode(t.attacl) a WHERE t.attrelid = %(t)s::regclass AND a.grantee NOT IN (0, c.relowner) ORDER BY 1",
        {"t": SHADOW}).fetchall()]


def columns(session: Any, table: str) -> list[tuple[str, str]]:
    """(name, type) of the table's columns in their order: the copy and the replay move rows with SELECT *."""
    return [tuple(row) for row in session.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()]


def same_columns(session: Any, tables: Sequence[str] = (LIVE, SHADOW)) -> bool:
    first, *others = (columns(session, table) for table in tables)
    return all(other == first for other in others)


def refuse_if_reshaped(session: Any, action: str) -> None:
    """Stop when allocations' columns no longer match the shadow's (a column added, dropped or retyped since the
    build): rows copied or replayed by position would land in the wrong columns, or silently lose one."""
    if not same_columns(session):
        raise CommandError(
            f"{action}: public.allocations' columns changed since its shadow was built (a column added, dropped or "
            "retyped): the shadow cannot follow. Nothing more was done; run `reserve swap abort` before the "
            "exchange, or `reserve swap finish` in the window (the rollback is then a rebuild), then the same "
            "command again.")
