"""plpgsql_check on every shipped function version: ``python -m tools.lint_plpgsql``.

A throw-away server (the rehearsal's harness) walks the chain up, one
revision at a time; after each step every PL/pgSQL function of this project
then installed is checked by plpgsql_check (Debian ``postgresql-15-plpgsql-check``,
the linter Supabase ships), against the schema of that revision: so each
version is checked as installed by the revision that ships it. At head (the
online swap's window open, so the swap's capture and replay functions are there too) every
version file under ``reserve/sql/functions`` is also installed and checked in
a transaction that is rolled back, so a version no revision installs is
never skipped.

Findings that are accepted are silenced here and only here, in ``SILENCED``,
each with its reason; a silence that no longer matches a finding is itself a
finding. Exit codes: 0 clean, 1 findings, 2 plpgsql_check is not installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db, sql
from reserve.rollout import alembic_runner
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import revisions

EXIT_CLEAN, EXIT_FINDINGS, EXIT_NO_EXTENSION = 0, 1, 2
SCHEMAS = ("public", "reserve_swap")


@dataclass(frozen=True)
class Finding:
    function: str  # as regprocedure prints it
    level: str
    message: str
    where: str  # the revision (or "head, <name> <version>") it was checked at

    def __str__(self) -> str:
        return f"{self.where}: {self.function}: {self.level}: {self.message}"


# (function name, message substring) -> why it is accepted.
SILENCED: dict[tuple[str, str], str] = {}


class ExtensionMissing(Exception):
    """plpgsql_check is not installed on the server."""


OURS = """
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE l.lanname = 'plpgsql' AND n.nspname = ANY(%(schemas)s) AND p.proname = ANY(%(names)s)
  AND (p.prorettype <> 'trigger'::regtype OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid))
"""
# A trigger function is checked against a table it is a trigger on (its NEW and OLD have that table's columns).
CHECK = """
SELECT p.oid::regprocedure::text, r.level, r.message
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
CROSS JOIN LATERAL plpgsql_check_function_tb(
  p.oid,
  relid => CASE WHEN p.prorettype = 'trigger'::regtype
                THEN (SELECT t.tgrelid FROM pg_trigger t WHERE t.tgfoid = p.oid ORDER BY t.tgrelid LIMIT 1)
                ELSE 0 END,
  other_warnings => true, extra_warnings => true, security_warnings => true, performance_warnings => false) r
WHERE l.lanname = 'plpgsql' AND n.nspname = ANY(%(schemas)s) AND p.proname = ANY(%(names)s)
  AND (p.prorettype <> 'trigger'::regtype OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid))
ORDER BY 1, 2, 3
"""


def ensure_extension(conn: psycopg.Connection[Any]) -> None:
    if conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'plpgsql_check'").fetchone()[0] == 0:
        raise ExtensionMissing("plpgsql_check is not installed on this server: install the Debian package "
                               "postgresql-15-plpgsql-check (`make lint` does)")
    conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")


@dataclass
class Result:
    findings: list[Finding]
    checked: set[str]  # the function names checked at least once

    def add(self, other: Result) -> None:
        seen = {(f.function, f.level, f.message) for f in self.findings}
        self.findings += [f for f in other.findings if (f.function, f.level, f.message) not in seen]
        self.checked |= other.checked


_CREATED = re.compile(r"CREATE (?:OR REPLACE )?FUNCTION\s+(?:\w+\.)?(\w+)\s*\(", re.I)


def created_name(name: str, version: str) -> str:
    """The function a version file creates (``swap_replay/v1.sql`` creates ``reserve_swap.replay``)."""
    match = _CREATED.search(sql.function_sql(name, version))
    if match is None:
        raise ValueError(f"reserve/sql/functions/{name}/{version}.sql creates no function")
    return match.group(1)


def shipped_names() -> list[str]:
    return sorted({created_name(name, version) for name in sql.function_names() for version in sql.function_versions(name)})


def check_installed(conn: psycopg.Connection[Any], where: str, names: list[str] | None = None) -> Result:
    """Every installed PL/pgSQL function of ours (or of ``names``), checked where it stands."""
    params = {"schemas": list(SCHEMAS), "names": names if names is not None else shipped_names()}
    checked = {row[0] for row in conn.execute("SELECT p.proname " + OURS, params).fetchall()}
    return Result([Finding(fn, level, message, where) for fn, level, message in conn.execute(CHECK, params)], checked)


def check_every_version(conn: psycopg.Connection[Any]) -> Result:
    """Each version file installed over what is there, checked, rolled back."""
    result = Result([], set())
    for name in sql.function_names():
        for version in sql.function_versions(name):
            with conn.transaction(force_rollback=True):
                conn.execute(sql.function_sql(name, version))
                result.add(check_installed(conn, f"head, {name} {version}", [created_name(name, version)]))
    return result


def lint(url: URL) -> Result:
    """Walk the chain up on ``url`` (an empty database), checking after every step; then every version."""
    result = Result([], set())
    with db.connect(url, autocommit=True) as conn:
        ensure_extension(conn)
    for revision in revisions.chain():
        alembic_runner.upgrade(url, revision, ["swap_method=online"])  # at head the window's functions are there
        with db.connect(url, autocommit=True) as conn:
            result.add(check_installed(conn, revision))
    with db.connect(url, autocommit=True) as conn:
        result.add(check_every_version(conn))
    return result


def unsilenced(found: list[Finding], silences: dict[tuple[str, str], str] = SILENCED
               ) -> tuple[list[Finding], list[tuple[str, str]]]:
    """The findings no silence accepts, and the silences no finding needs any more."""
    def silenced_by(f: Finding) -> tuple[str, str] | None:
        name = f.function.split("(")[0].split(".")[-1]
        return next((key for key in silences if key[0] == name and key[1] in f.message), None)

    used = {silenced_by(f) for f in found} - {None}
    return [f for f in found if silenced_by(f) is None], [key for key in silences if key not in used]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m tools.lint_plpgsql", description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        with EphemeralPostgres() as server:
            with db.connect(server.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE lint_plpgsql")
            result = lint(server.url("lint_plpgsql"))
    except ExtensionMissing as exc:
        print(f"plpgsql_check: {exc}", file=sys.stderr)
        return EXIT_NO_EXTENSION
    findings, stale = unsilenced(result.findings)
    for finding in findings:
        print(f"plpgsql_check: {finding}")
    for name, message in stale:
        print(f"plpgsql_check: the silence for {name} ({message!r}) matches no finding any more: remove it")
    never = sorted(set(shipped_names()) - result.checked)
    for name in never:
        print(f"plpgsql_check: {name} was never checked (not PL/pgSQL, or installed nowhere)")
    if findings or stale or never:
        return EXIT_FINDINGS
    print(f"plpgsql_check: {len(result.checked)} functions, every version, clean at each revision of the chain "
          f"({len(result.findings)} accepted finding(s), each silenced with its reason in tools/lint_plpgsql.py)")
    return EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main())
