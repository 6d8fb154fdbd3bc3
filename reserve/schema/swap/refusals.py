"""What the online method cannot carry to the new table, found before it builds anything.

The online swap replaces ``public.allocations`` by another table. What holds
the table's OID or row type and cannot be re-pointed in place would either go
with the previous table (and be dropped by `reserve swap finish`) or break the
exchange: such a schema takes the locked method (``-x swap_method=locked``),
which changes the guard in place and keeps every OID. Each line names the
object as PostgreSQL describes it (``pg_describe_object``) and why.

What the method does carry (foreign keys, policies, views, publications,
triggers) is reserve.schema.swap.dependents'; what the shadow copies of the
table itself, reserve.schema.swap.shadow.
"""

from __future__ import annotations

from typing import Any

from alembic.util import CommandError

from reserve.schema.session import qualified_names
from reserve.schema.swap.state import LIVE, SCHEMA

FALLBACK = "-x swap_method=locked"

# Each query: (description, why) of what cannot be carried; %(t)s is the table. Every name is described under
# the caller's search_path of pg_catalog, so schema-qualified.
_FOUND = (
    # Objects bound to the row type (or its array): a PostgREST computed field, a column of another table.
    """WITH rowtype AS (SELECT oid FROM pg_type WHERE typrelid = %(t)s::regclass
                     UNION ALL SELECT typarray FROM pg_type WHERE typrelid = %(t)s::regclass)
       SELECT pg_describe_object(d.classid, d.objid, d.objsubid),
              'bound to the row type of allocations, which stays with the previous table'
       FROM pg_depend d WHERE d.refclassid = 'pg_type'::regclass AND d.refobjid IN (SELECT oid FROM rowtype)
         AND NOT (d.classid = 'pg_type'::regclass AND d.objid IN (SELECT oid FROM rowtype))""",
    # What holds the table's OID and cannot be re-pointed: a materialized view, a rule, an SQL-standard function
    # body, an owned sequence, an inheritance child.
    """SELECT DISTINCT
              CASE WHEN r.rulename = '_RETURN' THEN pg_describe_object('pg_class'::regclass, r.ev_class, 0)
                   ELSE pg_describe_object(d.classid, d.objid, 0) END,
              CASE WHEN r.rulename = '_RETURN' THEN 'a materialized view cannot be re-pointed'
                   WHEN r.oid IS NOT NULL THEN 'a rule reads the table by OID'
                   WHEN d.classid = 'pg_proc'::regclass THEN 'its SQL-standard body reads the table by OID'
                   WHEN d.deptype = 'a' THEN 'owned by a column, it would go with the previous table'
                   WHEN i.inhrelid IS NOT NULL THEN 'an inheritance child would go with the previous table'
                   ELSE 'it holds the table by OID' END
       FROM pg_depend d
       LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
       LEFT JOIN pg_class v ON v.oid = r.ev_class
       LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
       LEFT JOIN pg_inherits i ON c.oid IS NOT NULL AND i.inhrelid = c.oid AND i.inhparent = %(t)s::regclass
       WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(t)s::regclass
         AND d.classid NOT IN ('pg_type'::regclass, 'pg_attrdef'::regclass, 'pg_constraint'::regclass,
                               'pg_policy'::regclass, 'pg_trigger'::regclass, 'pg_publication_rel'::regclass)
         AND (r.oid IS NULL OR r.rulename <> '_RETURN' OR v.relkind <> 'v')  -- a view: re-pointed (dependents)
         AND (c.oid IS NULL OR c.relkind NOT IN ('i', 't'))  -- its own indexes and TOAST table
         AND (c.oid IS NULL OR d.deptype <> 'n' OR i.inhrelid IS NOT NULL)""",
    """SELECT pg_describe_object('pg_class'::regclass, inhparent, 0), 'allocations inherits from it (or is its '
              'partition): the new table would not' FROM pg_inherits WHERE inhrelid = %(t)s::regclass""",
    """SELECT 'publication ' || quote_ident(pubname) || ' (FOR ALL TABLES)',
              'it would publish the swap''s own tables, which no subscriber has' FROM pg_publication
       WHERE puballtables""",
    """SELECT pg_describe_object('pg_statistic_ext'::regclass, oid, 0),
              'an extended statistics object is not moved with the table' FROM pg_statistic_ext
       WHERE stxrelid = %(t)s::regclass""",
    """SELECT 'column ' || quote_ident(a.attname) || ' of ' || %(t)s,
              CASE WHEN a.attidentity <> '' THEN 'an identity column (its sequence stays with the previous table)'
                   WHEN a.attgenerated <> '' THEN 'a generated column'
                   ELSE 'its default draws from a sequence it owns' END
       FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
         AND (a.attidentity <> '' OR a.attgenerated <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%')""",
    # Row-level security the running role is subject to on the table: every read the copy, the replay and the
    # compare make would be filtered (with row_security off, as the swap's sessions run, they raise instead).
    """SELECT 'role ' || quote_ident(current_user) || ' reading ' || %(t)s,
              CASE WHEN c.relforcerowsecurity THEN 'the table has FORCE ROW LEVEL SECURITY'
                   ELSE 'the table has row level security and the role does not own it' END
              || ' and the role is neither a superuser nor BYPASSRLS: its copy of the table would miss every row '
              || 'a policy hides (a superuser can ALTER ROLE ' || quote_ident(current_user) || ' BYPASSRLS)'
       FROM pg_class c JOIN pg_roles r ON r.rolname = current_user
       WHERE c.oid = %(t)s::regclass AND c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls)
         AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))""",
    # A subscription maps its publisher's changes to the table by OID (pg_subscription_rel): after the exchange
    # they would be applied to the previous table.
    """SELECT 'subscription ' || quote_ident(s.subname),
              'it applies its publisher''s changes to allocations by OID: after the exchange they would go to the '
              'previous table, not the live one' FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
       WHERE sr.srrelid = %(t)s::regclass""",
    """SELECT 'foreign key ' || quote_ident(conname) || ' of ' || %(t)s,
              'it references allocations itself: rows of the previous table inside the window would point at '
              'the live one' FROM pg_constraint
       WHERE conrelid = %(t)s::regclass AND confrelid = conrelid AND contype = 'f'""",
)


_FIND = " UNION ALL ".join(f"({query})" for query in _FOUND)  # one statement: the exchange runs it under its lock


def find(session: Any, table: str = LIVE) -> list[str]:
    """One line per object the online method cannot carry: ``<object>: <why>``, in a stable order (the caller's
    transaction gets a local search_path of pg_catalog, for qualified names). The swap's own objects are not
    counted."""
    qualified_names(session)
    return sorted({f"{what}: {why}" for what, why in session.execute(_FIND, {"t": table}).fetchall()
                   if f" {SCHEMA}." not in f" {what}"})


def refuse(session: Any, action: str, table: str = LIVE) -> None:
    """Stop, with nothing built, when anything on ``table`` cannot be carried; each object on its own line."""
    found = find(session, table)
    if found:
        raise CommandError(
            f"{action}: the online swap cannot carry what depends on {table}, so it changed nothing; use "
            f"{FALLBACK} (the guard is changed in place, every OID kept):\n  " + "\n  ".join(found))
