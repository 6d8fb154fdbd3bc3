"""Whether the shadow is still the live table's likeness: the check each exchange makes before it trades them.

The shadow copies the live table's definition when it is built
(reserve.schema.swap.shadow). DDL made afterwards (a grant, an index, a
policy, a comment, a setting; on the live table during the copy, or on
either table inside the window) would be undone by the exchange: the table
arriving lacks it. So each exchange (forward, and back inside the window)
describes both tables from the catalog, fact by fact as pg_dump would print
them, and refuses, listing every difference beyond the guards, with nothing
changed. Grants and table options are carried instead (the live table's are
set again on the shadow before each exchange), and triggers are not compared: the exchange
moves them, under its lock, from the table that leaves to the table that
arrives (reserve.schema.swap.dependents).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from alembic.util import CommandError

from reserve.schema.session import qualified_names
from reserve.schema.swap.shadow import column_options
from reserve.schema.swap.state import LIVE, SHADOW

# One query per kind of fact, run as one statement (the exchange runs it under its lock): (table, fact, value)
# rows for each table of %(t)s.
_FACTS = (
    """SELECT c.oid::regclass::text, 'table',
              concat_ws(' | ', 'owner ' || c.relowner::regrole::text, 'persistence ' || c.relpersistence::text,
              'rls ' || c.relrowsecurity::text || '/' || c.relforcerowsecurity::text,
              'options ' || array_to_string(ARRAY(SELECT o FROM unnest(c.reloptions) o ORDER BY o), ','),
              'toast options ' || array_to_string(ARRAY(SELECT o FROM unnest(t.reloptions) o ORDER BY o), ','),
              'replica identity ' || c.relreplident::text, 'tablespace ' || COALESCE(s.spcname, 'default'),
              'comment ' || obj_description(c.oid, 'pg_class'))
       FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
       LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace WHERE c.oid = ANY (%(t)s::regclass[])""",
    """SELECT c.oid::regclass::text, 'grants', array_to_string(ARRAY(
              SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ' ' ||
                     a.privilege_type || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
              FROM aclexplode(COALESCE(c.relacl, acldefault('r', c.relowner))) a ORDER BY 1), ', ')
       FROM pg_class c WHERE c.oid = ANY (%(t)s::regclass[])""",
    """SELECT a.attrelid::regclass::text, 'column ' || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
              concat_ws(' | ', quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod),
                        CASE WHEN a.attnotnull THEN 'not null' END, 'default ' || pg_get_expr(d.adbin, d.adrelid),
                        'collation ' || NULLIF(a.attcollation, t.typcollation)::regcollation::text,
                        'statistics ' || NULLIF(a.attstattarget, -1), 'options ' || array_to_string(COLUMN_OPTIONS, ','),
                        'storage ' || NULLIF(a.attstorage, t.typstorage)::text,
                        'compression ' || NULLIF(a.attcompression, '')::text,
                        'comment ' || col_description(a.attrelid, a.attnum),
                        'grants ' || array_to_string(ARRAY(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1), ','))
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE a.attrelid = ANY (%(t)s::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped""",
    """SELECT conrelid::regclass::text, 'constraint ' || quote_ident(conname),
              concat_ws(' | ', pg_get_constraintdef(oid), CASE WHEN NOT convalidated THEN 'not valid' END,
                        'comment ' || obj_description(oid, 'pg_constraint'))
       FROM pg_constraint WHERE conrelid = ANY (%(t)s::regclass[])""",
    """SELECT i.indrelid::regclass::text, 'index ' || quote_ident(c.relname),
              concat_ws(' | ', pg_get_indexdef(i.indexrelid), CASE WHEN i.indisclustered THEN 'cluster on' END,
                        CASE WHEN i.indisreplident THEN 'replica identity' END,
                        'tablespace ' || s.spcname, 'comment ' || obj_description(c.oid, 'pg_class'))
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace
       WHERE i.indrelid = ANY (%(t)s::regclass[])""",
    """SELECT polrelid::regclass::text, 'policy ' || quote_ident(polname),
              concat_ws(' | ', CASE WHEN polpermissive THEN 'permissive' ELSE 'restrictive' END, polcmd::text,
                        array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                                              FROM unnest(polroles) r ORDER BY 1), ','),
                        'using ' || pg_get_expr(polqual, polrelid), 'check ' || pg_get_expr(polwithcheck, polrelid),
                        'comment ' || obj_description(oid, 'pg_policy'))
       FROM pg_policy WHERE polrelid = ANY (%(t)s::regclass[])""",
)


_DESCRIBE = " UNION ALL ".join(f"({query})" for query in _FACTS).replace("COLUMN_OPTIONS", column_options("a"))


def describe(session: Any, *tables: str) -> dict[str, dict[str, str]]:
    """table -> fact -> value for each of ``tables``: its settings, grants, columns, constraints, indexes and
    policies, with the table's own name written ``{table}`` (the caller's transaction gets a local search_path of
    pg_catalog, so that each table is named schema-qualified, as given)."""
    qualified_names(session)
    facts: dict[str, dict[str, str]] = {table: {} for table in tables}
    for table, fact, value in session.execute(_DESCRIBE, {"t": list(tables)}).fetchall():
        facts[table][fact] = (value or "").replace(f" {table} ", " {table} ")
    return facts


def differences(session: Any, guards: Collection[str], left: str = LIVE, right: str = SHADOW) -> list[str]:
    """Every fact on which the two tables differ, but those of ``guards`` (the constraints and indexes one side
    has and the other must not): one line each, naming both sides."""
    described = describe(session, left, right)
    a, b = described[left], described[right]
    skipped = {f"{kind} {name}" for name in guards for kind in ("constraint", "index")}
    return [f"{fact}: {left} has {a.get(fact) or '(none)'}; {right} has {b.get(fact) or '(none)'}"
            for fact in sorted(set(a) | set(b)) if fact not in skipped and a.get(fact) != b.get(fact)]


def refuse_if_different(session: Any, guards: Collection[str], action: str) -> None:
    """Stop the exchange, with nothing changed, when DDL made since the shadow was built would be undone by it."""
    found = differences(session, guards)
    if found:
        raise CommandError(
            f"{action}: {LIVE} and {SHADOW} no longer have the same definition (DDL made since the shadow was "
            "built, which the exchange would undo); nothing was changed. Make the same change on the other table, "
            "or before the exchange `reserve swap abort`, in the window `reserve swap finish` (the rollback is then "
            "the locked rebuild), then run it again:\n  " + "\n  ".join(found))
