"""The PostgreSQL catalog, as text that can be compared and diffed.

"Same schema" in this project means the same rows in pg_constraint,
pg_index, pg_proc, pg_policies, the same ACLs and RLS flags: SQLAlchemy
reflection sees none of exclusion constraints, function bodies, policies or
grants, which are exactly what the revisions change. A snapshot is a dict of
sections, each a sorted list of one-line facts, stable across databases
(names, never OIDs). Objects that belong to extensions, Alembic's own
version table, and ``reserve_pending_*`` indexes (left by an interrupted
rollback, reported by ``reserve verify``) are left out.
"""

from __future__ import annotations

from typing import Any

import psycopg

# Built by an interrupted rollback ahead of its lock; not part of any revision's schema.
PENDING_INDEX_PREFIX = "reserve_pending_"

USER_SCHEMAS = """
  n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%'
"""
# An ACL as sorted "grantee:PRIVILEGE" items, the owner written as "owner" so that
# the same grants compare equal whoever ran the migration (postgres here,
# supabase_admin there). NULL (the built-in default) is "-", except for schemas, whose NULL is written as the
# default it stands for (the owner's CREATE and USAGE): `REVOKE ALL ON SCHEMA … FROM PUBLIC` leaves exactly that,
# spelled out, and pg_dump/pg_restore brings it back as NULL (a restored window's schema is the same schema).
ACL = """COALESCE((SELECT string_agg(item, ',' ORDER BY item) FROM (
    SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' WHEN x.grantee = {owner} THEN 'owner'
                ELSE pg_get_userbyid(x.grantee) END || ':' || x.privilege_type AS item
    FROM aclexplode({acl}) x) items), '-')"""
NOT_EXTENSION_MEMBER = """
  NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')
"""

SECTIONS: dict[str, str] = {
    "extensions": """
        SELECT e.extname || ' schema=' || n.nspname
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'
    """,
    "schemas": f"""
        SELECT n.nspname || ' acl=' || {ACL.format(acl="COALESCE(n.nspacl, acldefault('n', n.nspowner))",
                                                  owner='n.nspowner')}
        FROM pg_namespace n WHERE {USER_SCHEMAS} AND n.nspname <> 'public'
          AND {NOT_EXTENSION_MEMBER.format(oid='n.oid')}
    """,
    "types": f"""
        SELECT n.nspname || '.' || t.typname || ' enum(' ||
               (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
               || ')'
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype = 'e' AND {USER_SCHEMAS} AND {NOT_EXTENSION_MEMBER.format(oid='t.oid')}
    """,
    "tables": f"""
        SELECT n.nspname || '.' || c.relname || ' kind=' || c.relkind::text
               || ' rls=' || c.relrowsecurity::text || ' force_rls=' || c.relforcerowsecurity::text
               || ' acl=' || {ACL.format(acl='c.relacl', owner='c.relowner')}
               -- A view's security_invoker or check_option changes who reads what: as much schema as a grant.
               || COALESCE(' options=' || array_to_string(c.reloptions, ','), '')
               || CASE WHEN c.relkind IN ('r', 'p') AND c.relreplident <> 'd'
                       THEN ' replica_identity=' || c.relreplident::text ELSE '' END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {USER_SCHEMAS}
          AND NOT (n.nspname = 'public' AND c.relname = 'alembic_version')
          AND {NOT_EXTENSION_MEMBER.format(oid='c.oid')}
    """,
    "columns": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               -- A default has no column references: deparsed without opening (and locking) its table,
               -- so a snapshot never waits behind a migration's ACCESS EXCLUSIVE lock here.
               || COALESCE(' default ' || pg_get_expr(ad.adbin, CASE WHEN a.attgenerated = '' THEN 0
                                                                 ELSE ad.adrelid END), '')
               || CASE WHEN a.attacl IS NULL THEN ''
                       ELSE ' acl=' || {ACL.format(acl='a.attacl', owner='c.relowner')} END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND {USER_SCHEMAS}
          AND NOT (n.nspname = 'public' AND c.relname = 'alembic_version')
          AND {NOT_EXTENSION_MEMBER.format(oid='c.oid')}
    """,
    "constraints": f"""
        SELECT n.nspname || '.' || c.relname || ' ' || con.conname || ': ' || pg_get_constraintdef(con.oid)
               || CASE WHEN con.convalidated THEN '' ELSE ' [NOT VALID]' END
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND NOT (n.nspname = 'public' AND c.relname = 'alembic_version')
    """,
    "indexes": f"""
        SELECT pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' [INVALID]' END
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND NOT (n.nspname = 'public' AND c.relname = 'alembic_version')
          AND {NOT_EXTENSION_MEMBER.format(oid='c.oid')}
          AND NOT starts_with(i.indexrelid::regclass::text, '{PENDING_INDEX_PREFIX}')
    """,
    "functions": f"""
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
               || ' returns ' || pg_get_function_result(p.oid)
               || CASE WHEN p.prosecdef THEN ' security definer' ELSE ' security invoker' END
               || ' volatility=' || p.provolatile::text
               || ' config=' || COALESCE(array_to_string(p.proconfig, ';'), '-')
               || ' acl=' || {ACL.format(acl='p.proacl', owner='p.proowner')}
               || ' body_sha256=' || encode(sha256(convert_to(p.prosrc, 'UTF8')), 'hex')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER_SCHEMAS} AND {NOT_EXTENSION_MEMBER.format(oid='p.oid')}
    """,
    "policies": """
        SELECT schemaname || '.' || tablename || ' "' || policyname || '" ' || permissive || ' ' || cmd
               || ' to ' || array_to_string(roles, ',')
               || ' using (' || COALESCE(qual, '') || ') check (' || COALESCE(with_check, '') || ')'
        FROM pg_policies
    """,
    "triggers": f"""
        SELECT pg_get_triggerdef(t.oid) || CASE WHEN t.tgenabled <> 'O' THEN ' enabled=' || t.tgenabled::text
                                                 ELSE '' END
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {USER_SCHEMAS}
    """,
}

Snapshot = dict[str, list[str]]


def pending_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Indexes a rollback built ahead of its lock and an interruption left behind (see reserve.schema.migration)."""
    rows = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE starts_with(indexrelid::regclass::text, %s)",
        (PENDING_INDEX_PREFIX,),
    ).fetchall()
    return [row[0] for row in rows]


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """The catalog facts that matter to this project, section by section, sorted."""
    result: Snapshot = {}
    with conn.cursor() as cur:
        for section, query in SECTIONS.items():
            cur.execute(query)
            # One fact per line: policy expressions come back with newlines and indentation.
            result[section] = sorted(" ".join(row[0].split()) for row in cur.fetchall())
    return result


def as_text(snap: Snapshot) -> str:
    """Render a snapshot as stable, diffable text."""
    lines: list[str] = []
    for section in sorted(snap):
        lines.append(f"[{section}]")
        lines.extend(snap[section])
        lines.append("")
    return "\n".join(lines)
