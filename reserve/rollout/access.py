"""``reserve access``: who may do what, as one picture a reviewer can diff.

For each role that matters on this platform (PUBLIC, anon, authenticated,
service_role, the maintenance role, and the role this runs as), against every
table, view, sequence and function of ``public`` (extension members left out):
the privileges PostgreSQL grants it (``has_*_privilege``: through membership
and ownership too), and, per table, whether row level security is enabled or
forced and which policies apply to the role for which command. One line per
object and role, sorted, so that two matrices diff line by line.

``widened(before, after)`` lists every way ``after`` allows more than
``before``: a privilege added, RLS disabled or no longer forced, a permissive
policy that now applies, a restrictive one that no longer does. The chain's
own widenings are declared in ``DECLARED_WIDENINGS`` with their reason, and only there:
the rehearsal is a no-go on any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import OK, Report

ROLES = ("public", "anon", "authenticated", "service_role", "reserve_maintenance")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")

_NOT_EXTENSION = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass AND d.objid = {oid} "
                  "AND d.deptype = 'e')")
_RELATIONS = f"""
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind, c.relrowsecurity,
       c.relforcerowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND {_NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
ORDER BY 2
"""
_FUNCTIONS = f"""
SELECT p.oid, p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND {_NOT_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")}
ORDER BY 2
"""
_POLICIES = """
SELECT cmd, policyname, permissive FROM pg_policies
WHERE schemaname = 'public' AND tablename = %(table)s AND (%(role)s = ANY(roles) OR 'public' = ANY(roles))
ORDER BY cmd, policyname
"""
MIGRATOR = "migrating role"
KINDS = {"r": "table", "p": "table", "v": "view", "m": "view", "f": "table", "S": "sequence"}


@dataclass(frozen=True)
class Widening:
    object: str
    role: str
    what: str  # e.g. "privilege SELECT", "policy ALL \"name\" (PERMISSIVE)", "RLS disabled"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.object, self.role, self.what)

    def __str__(self) -> str:
        return f"{self.object} | {self.role} | {self.what}"


_0002 = "0002 creates booking_confirmation_results with the tenant policy and grants of every RLS table"
_0003A = "0003a creates confirmation_cache_events like the evidence table (tenant policy, service_role grants)"
# The chain's widenings, from 0001_baseline to head, each with its reason: the rehearsal accepts these and no
# other. Keys: (object, role, what), as `widened` prints them; * matches anything.
DECLARED_WIDENINGS: dict[tuple[str, str, str], str] = {
    ("public.booking_confirmation_results", "service_role", "*"): _0002,
    ("public.confirmation_cache_events", "service_role", "*"): _0003A,
    ("public.feature_flag_overrides", "service_role", 'policy * "Tenant service role can * feature flag overrides" '
     "(PERMISSIVE)"): "0003b replaces the one ALL policy by one per command: a venue reads its own and the global "
                      "rows, and writes only its own (the global overrides become read-only to venues)",
    ("public.purge_booking_confirmation_results(timestamp with time zone,integer,boolean)", "reserve_maintenance",
     "privilege EXECUTE"): "0003c: retention is the platform's, run as reserve_maintenance (0003a created the purge)",
    ("*", MIGRATOR, "privilege *"): "the migrating role owns every object the chain creates",
}


def roles(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(label, role name) of the platform's roles that exist here, and of the role this runs as (labelled
    ``migrating role``, whatever its name: it owns what the chain creates)."""
    present = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))}
    me = conn.execute("SELECT current_user").fetchone()[0]
    return [(r, r) for r in ROLES if r == "public" or r in present] + [(MIGRATOR, me)]


def matrix(conn: psycopg.Connection[Any]) -> list[str]:
    """The access matrix, one sorted line per object and role (and one per table for its RLS flags)."""
    who = roles(conn)
    lines: list[str] = []
    for oid, name, kind, rls, forced in conn.execute(_RELATIONS).fetchall():
        privileges = SEQUENCE_PRIVILEGES if kind == "S" else TABLE_PRIVILEGES
        check = "has_sequence_privilege" if kind == "S" else "has_table_privilege"
        if KINDS[kind] == "table":
            lines.append(f"{name} | * | RLS {'enabled' if rls else 'disabled'}, {'forced' if forced else 'not forced'}")
        for label, role in who:
            held = [p for p in privileges
                    if conn.execute(f"SELECT {check}(%s, %s::oid, %s)", (role, oid, p)).fetchone()[0]]
            lines.append(f"{name} | {label} | {KINDS[kind]} privileges: {','.join(held) or '-'}")
            if KINDS[kind] == "table" and rls:
                table = name.split(".", 1)[1].strip('"')
                for cmd, policy, permissive in conn.execute(_POLICIES, {"table": table, "role": role}).fetchall():
                    lines.append(f'{name} | {label} | policy {cmd} "{policy}" ({permissive})')
    for oid, signature in conn.execute(_FUNCTIONS).fetchall():
        for label, role in who:
            can = conn.execute("SELECT has_function_privilege(%s, %s::oid, 'EXECUTE')", (role, oid)).fetchone()[0]
            lines.append(f"public.{signature} | {label} | function privileges: {'EXECUTE' if can else '-'}")
    return sorted(lines)


def as_text(lines: list[str]) -> str:
    return "# reserve access: object | role | what it may do (has_*_privilege, RLS, policies that apply)\n" + \
        "".join(f"{line}\n" for line in lines)


_LINE = re.compile(r"^(?P<object>.+?) \| (?P<role>[^|]+) \| (?P<what>.+)$")


def _parse(text: str) -> dict[tuple[str, str], set[str]]:
    """{(object, role): {privilege ..., policy ..., RLS flags}} from a matrix's text."""
    out: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or line.startswith("#"):
            continue
        what = m["what"]
        items = out.setdefault((m["object"], m["role"]), set())
        if "privileges: " in what:
            items |= {f"privilege {p}" for p in what.split("privileges: ", 1)[1].split(",") if p != "-"}
        elif what.startswith("RLS "):
            items |= {"RLS " + flag.strip() for flag in what[4:].split(",")}
        else:
            items.add(what)
    return out


def widened(before: str, after: str) -> list[Widening]:
    """Every way ``after`` allows more than ``before`` (each a text from ``as_text``)."""
    old, new = _parse(before), _parse(after)
    found: list[Widening] = []
    for (obj, role), items in sorted(new.items()):
        had = old.get((obj, role), set())
        for item in sorted(items - had):
            if item.startswith("privilege ") or (item.startswith("policy ") and item.endswith("(PERMISSIVE)")):
                found.append(Widening(obj, role, item))
            elif item in ("RLS disabled", "RLS not forced") and (obj, role) in old:
                found.append(Widening(obj, role, item))
        for item in sorted(had - items):
            if item.startswith("policy ") and item.endswith("(RESTRICTIVE)"):
                found.append(Widening(obj, role, f"no longer {item}"))
    return found


def _matches(pattern: str, value: str) -> bool:
    if pattern == "*":
        return True
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), value) is not None


def undeclared(found: list[Widening], declared: dict[tuple[str, str, str], str] = DECLARED_WIDENINGS) -> list[Widening]:
    """The widenings no entry of ``declared`` accounts for."""
    return [w for w in found if not any(all(_matches(p, v) for p, v in zip(key, w.key, strict=True))
                                        for key in declared)]


def report(url: URL) -> Report:
    """``reserve access``: the matrix as a report (one check per role), its lines in ``facts``."""
    out = Report("access")
    with db.connect(url, autocommit=True) as conn:
        lines = matrix(conn)
        out.facts.update({"database": db.masked(url), "matrix": lines})
        for label, role in roles(conn):
            mine = [line for line in lines if f" | {label} | " in line]
            granted = sum(1 for line in mine if "privileges: -" not in line and "privileges:" in line)
            policies = sum(1 for line in mine if " | policy " in line)
            out.add(label if label == role else f"{label} ({role})", OK,
                    f"{granted} object(s) with privileges, {policies} policy application(s)")
    return out
