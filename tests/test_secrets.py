"""The password in DATABASE_URL never leaks: not on stdout or stderr of any `reserve` subcommand or of
`alembic`, not in a log, not in any file they write, whether the run succeeds or cannot connect.

The server of the test session listens on 127.0.0.1 with scram-sha-256 for TCP logins (see
reserve.rollout.ephemeral), so the password below is really used to log in. It is given to a role of its own
(a superuser, as the deploying role is for the rehearsal's CREATE DATABASE and the revisions), so the
session's own role keeps its password for the other tests.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL

from reserve import db
from reserve.rollout import alembic_runner
from tests.support import Database

pytestmark = pytest.mark.slow  # `make test-slow`: every command, the rehearsal and alembic run with a password to look for

# Distinct from anything else in the run; the specials make the URL-encoded form differ from the raw one.
CORE = f"a-distinct-secret-{secrets.token_hex(8)}"
PASSWORD = CORE + "@/%:#?"
ROLE = f"reserve_secret_deployer_{os.getpid()}"


def leaked_forms() -> list[str]:
    """Every spelling of the password that would count as a leak."""
    rendered = URL.create("postgresql", "u", PASSWORD, "h").render_as_string(hide_password=False)
    in_url = rendered.split("u:", 1)[1].rsplit("@h", 1)[0]
    return sorted({PASSWORD, CORE, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote_plus(PASSWORD), in_url})


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}  -> {self.returncode}\n{self.stdout}\n{self.stderr}"


@dataclass
class Deployer:
    """A database at head reachable with the secret password, and a scratch working directory."""

    url: URL
    workdir: Path
    server_log: Path | None
    runs: list[Run]

    def env_url(self, url: URL | None = None) -> str:
        return (url or self.url).render_as_string(hide_password=False)

    def reserve(self, *args: str, url: URL | None = None, timeout: float = 600) -> Run:
        return self._run([str(Path(sys.executable).parent / "reserve"), *args], url, timeout)

    def alembic(self, *args: str, url: URL | None = None, timeout: float = 300) -> Run:
        done = alembic_runner.run_cli(url or self.url, *args, timeout=timeout, cwd=self.workdir)
        return self._record(["alembic", *args], done)

    def _run(self, argv: list[str], url: URL | None, timeout: float) -> Run:
        env = {**os.environ, db.ENV_VAR: self.env_url(url)}
        done = subprocess.run(argv, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout)
        return self._record(["reserve", *argv[1:]], done)

    def _record(self, shown: list[str], done: subprocess.CompletedProcess[str]) -> Run:
        run = Run(shown, done.returncode, done.stdout, done.stderr)
        self.runs.append(run)
        return run


def _role_exists_or_skip(admin: psycopg.Connection) -> None:
    try:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test server's role may not create a login role with a password")


@pytest.fixture
def deployer(pg_server, head_db: Database, tmp_path: Path) -> Iterator[Deployer]:
    with psycopg.connect(db.libpq_url(pg_server.url()), autocommit=True) as admin:
        _role_exists_or_skip(admin)
    try:
        url = head_db.url.set(username=ROLE, password=PASSWORD, host="127.0.0.1")
        workdir = tmp_path / "work"
        workdir.mkdir()
        log = getattr(pg_server, "workdir", None)
        yield Deployer(url, workdir, (log / "server.log") if log else None, [])
    finally:
        with head_db.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(ROLE)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        with psycopg.connect(db.libpq_url(pg_server.url()), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def _assert_no_leak(deployer: Deployer) -> None:
    forms = leaked_forms()
    places: dict[str, str] = {}
    for run in deployer.runs:
        places[f"stdout of {' '.join(run.argv)}"] = run.stdout
        places[f"stderr of {' '.join(run.argv)}"] = run.stderr
    written = [p for p in deployer.workdir.rglob("*") if p.is_file()]
    for path in written:
        places[f"file {path.relative_to(deployer.workdir)}"] = path.read_bytes().decode("utf-8", errors="replace")
    if deployer.server_log is not None and deployer.server_log.exists():
        places["the server log"] = deployer.server_log.read_text(encoding="utf-8", errors="replace")
    leaks = [(where, form) for where, text in places.items() for form in forms if form in text]
    assert not leaks, leaks


def test_no_reserve_or_alembic_command_prints_logs_or_writes_the_password(deployer: Deployer):
    d = deployer
    # The password is really the login: a wrong one is refused (so the runs below used it).
    refused = d.reserve("verify", url=d.url.set(password="not-" + CORE[::-1]))
    assert refused.returncode == 2 and "password authentication failed" in refused.stderr + refused.stdout

    restaurant = None
    with psycopg.connect(db.libpq_url(d.url), autocommit=True) as conn:
        restaurant = conn.execute("INSERT INTO restaurants (name) VALUES ('Secret Test') RETURNING id").fetchone()[0]

    # Exit 0 or 1 (a report's verdict) both mean the command connected and ran; 2 would be a failure to.
    expected = {
        ("preflight",): {0, 1},
        ("preflight", "--json"): {0, 1},
        ("preflight", "--target", "0003a_operations"): {0, 1},
        ("snapshot", "-o", "before.txt"): {0},
        ("snapshot",): {0},
        ("verify",): {0, 1},
        ("verify", "--json"): {0, 1},
        ("adopt",): {1},  # already adopted
        ("flags", "list"): {0},
        ("flags", "get", "--restaurant", str(restaurant)): {0},
        ("flags", "set", "pairwise", "--restaurant", str(restaurant)): {0},
        ("flags", "unset", "--restaurant", str(restaurant)): {0},
        ("flags", "list", "--json"): {0},
        ("monitor", "--once", "--probe-runs", "2"): {0, 1},
        ("monitor", "--once", "--probe-runs", "2", "--json"): {0, 1},
        ("retention", "--older-than", "30d", "--dry-run"): {0},
        ("retention", "--older-than", "30d"): {0},
        ("analyze", "confirmations"): {0},
        ("analyze", "confirmations", "--json"): {0},
        ("access",): {0},
        ("access", "--json"): {0},
        ("swap", "status", "--probe-writes", "0"): {0},
        ("rehearse", "--rows", "1000", "--use-database-url", "--out", "artifacts"): {0, 1},
    }
    for args, codes in expected.items():
        run = d.reserve(*args)
        assert run.returncode in codes, str(run)
    alembic_runs = [
        (("current",), {0}),
        (("history",), {0}),
        (("downgrade", "-1"), {0}),
        (("upgrade", "head"), {0}),
        (("upgrade", "head", "--sql"), {0}),
        (("downgrade", "0004_allocations_no_overlap:0003c_maintenance_role", "--sql"), {0}),
    ]
    for args, codes in alembic_runs:
        run = d.alembic(*args)
        assert run.returncode in codes, str(run)
    after = d.reserve("snapshot", "-o", "after.txt")
    assert after.returncode == 0, str(after)
    assert d.reserve("diff", "before.txt", "after.txt").returncode in {0, 1}

    assert (d.workdir / "before.txt").is_file() and list((d.workdir / "artifacts").glob("*/SUMMARY.md"))
    _assert_no_leak(d)


BROKEN = {
    "closed port": lambda url: url.set(port=1),
    "unresolvable host": lambda url: url.set(host="no-such-host.invalid"),
    "missing database": lambda url: url.set(database="no_such_database_here"),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_connection_errors_name_the_server_but_never_the_password(deployer: Deployer, breakage):
    d = deployer
    url = BROKEN[breakage](d.url)
    commands = [("preflight",), ("flags", "list"), ("monitor", "--once"),
                ("rehearse", "--rows", "1000", "--use-database-url", "--out", "artifacts")]
    if breakage == "closed port":  # every command once; they share db.connect, so the other breakages sample
        commands += [("verify",), ("adopt",), ("snapshot",), ("flags", "get"), ("flags", "set", "connected"),
                     ("retention", "--older-than", "30d", "--dry-run"), ("analyze", "confirmations"), ("access",),
                     ("swap", "status")]
    for args in commands:
        run = d.reserve(*args, url=url, timeout=120)
        assert run.returncode == 2, str(run)
        assert "cannot connect" in run.stderr, str(run)
        assert "Traceback" not in run.stderr, str(run)
        assert "***" in run.stderr or not url.password, str(run)  # the URL is named, masked
    for args in (("upgrade", "head"), ("downgrade", "-1")):
        run = d.alembic(*args, url=url, timeout=120)
        assert run.returncode != 0, str(run)
        assert "cannot connect" in run.stderr, str(run)
        assert "Traceback" not in run.stderr, str(run)
    _assert_no_leak(d)


def test_the_leak_check_would_see_the_url_encoded_password():
    """The control: the spellings the checks look for include the one a URL carries."""
    url = URL.create("postgresql", ROLE, PASSWORD, "127.0.0.1", 5432, "x").render_as_string(hide_password=False)
    assert any(form in url for form in leaked_forms())
    assert PASSWORD not in url  # the raw form is not what a URL shows: both must be searched
    assert re.search(re.escape(CORE), url)
