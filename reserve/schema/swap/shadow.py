"""The shadow: a copy of allocations' definition in schema reserve_swap, with the target guard once it is filled.

Everything is read from the live table's catalog, so that after the exchange
the catalog is exactly what the in-place method leaves: the same columns
(order, types, defaults, NOT NULL), the same CHECK and key constraints under the same names (its foreign keys
once it is filled), the same indexes under the same names
(minus what the swap drops, plus what it adds), RLS flags, policies, grants,
storage options, replica identity and owner. Because the shadow lives in
its own schema, its indexes carry their final names from the start: the
exchange moves tables between schemas and renames nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alembic.util import CommandError

from reserve.schema import guards
from reserve.schema.swap.state import LIVE, SHADOW


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


class UnsupportedTable(Exception):
    """The live table has something the shadow cannot reproduce exactly; the swap does not start."""


def _qualified(session: Any) -> None:
    """Deparse every name with its schema (definitions are replayed on another table, in another schema)."""
    session.execute("SELECT set_config('search_path', 'pg_catalog', true)")


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
    _qualified(session)
    refuse_unsupported(session)
    table = [f"CREATE TABLE {SHADOW} (LIKE {LIVE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
             "INCLUDING COMMENTS)"]
    after_fill = [f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition}' for name, definition in session.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('u', 'x') ORDER BY conname", (LIVE,)).fetchall()
        if name not in target.drop_constraints]
    for name, definition in session.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND NOT EXISTS "
            "  (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) "
            "ORDER BY 1", (LIVE,)).fetchall():
        if name not in target.drop_indexes:
            after_fill.append(definition.replace(f" ON {LIVE} ", f" ON {SHADOW} ", 1))
    after_fill += [index.format(table=SHADOW) for index in target.add_indexes]
    settings, identity = _table_settings(session)
    table += settings
    table += _policies(session)
    return Definition(table, after_fill + identity)


def primary_key(session: Any) -> list[str]:
    """The statement that builds the live table's primary key on the shadow (the swap neither drops nor adds one)."""
    _qualified(session)
    return [f'ALTER TABLE {SHADOW} ADD CONSTRAINT "{name}" {definition}' for name, definition in session.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        (LIVE,)).fetchall()]


def referenced_tables(session: Any, table: str) -> list[str]:
    """The tables ``table``'s foreign keys reference, schema-qualified: what adding or dropping those keys locks."""
    return [row[0] for row in session.execute(
        "SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE k.conrelid = to_regclass(%s) AND k.contype = 'f' ORDER BY 1", (table,)).fetchall()]


def foreign_keys(session: Any) -> list[tuple[str, str]]:
    """(name, definition) of the live table's own foreign keys, which the shadow gets after its backfill (added
    NOT VALID, then validated in one pass): checked row by row during the copy they would cost a quarter of it,
    and every row the shadow holds is a committed row of the live table, whose keys hold."""
    _qualified(session)
    return [tuple(row) for row in session.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f' "
        "ORDER BY conname", (LIVE,)).fetchall()]


def grants(session: Any) -> list[str]:
    """The live table's grants on the shadow, exactly: after the shadow exists (default privileges may have
    granted it more), revoke every grant it has, then grant what the live table grants."""
    return [f"REVOKE ALL ON {SHADOW} FROM PUBLIC", *revoke_inherited_grants(session), *_grants(session)]


def _table_settings(session: Any) -> tuple[list[str], list[str]]:
    """(what the shadow gets when it is created, its replica identity: after its indexes, one of which it may name)."""
    rls, force, options, identity, owner, comment = session.execute(
        "SELECT relrowsecurity, relforcerowsecurity, reloptions, relreplident, relowner::regrole::text, "
        "quote_literal(obj_description(oid, 'pg_class')) FROM pg_class WHERE oid = %s::regclass", (LIVE,)).fetchone()
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
    """REVOKE statements for every non-owner grantee the new shadow got from default privileges."""
    return [f"REVOKE ALL ON {SHADOW} FROM {grantee}" for (grantee,) in session.execute(
        "SELECT DISTINCT quote_ident(a.grantee::regrole::text) FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = %s::regclass AND a.grantee NOT IN (0, c.relowner)", (SHADOW,)).fetchall()]


def refuse_unsupported(session: Any) -> None:
    """Stop before anything is built when the live table has what the shadow cannot reproduce exactly."""
    found: list[str] = []
    for column, detail in session.execute(
            "SELECT a.attname, CASE WHEN a.attidentity <> '' THEN 'an identity column' "
            "                      WHEN a.attgenerated <> '' THEN 'a generated column' "
            "                      ELSE 'a default from an owned sequence' END "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            "  AND (a.attidentity <> '' OR a.attgenerated <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%')",
            (LIVE,)).fetchall():
        found.append(f"column {column} is {detail}")
    for (name,) in session.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND "
                                   "confrelid = conrelid AND contype = 'f' ORDER BY 1", (LIVE,)).fetchall():
        # Copied as it is, it would point at the table that leaves at the exchange; re-pointed, the rows of the
        # previous table inside the window would point at the live one. Neither is the locked method's catalog.
        found.append(f"foreign key {name} references allocations itself")
    (statistics,) = session.execute("SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = %s::regclass",
                                    (LIVE,)).fetchone()
    if statistics:
        found.append(f"{statistics} extended statistics object(s)")
    if found:
        raise UnsupportedTable("; ".join(found))


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
