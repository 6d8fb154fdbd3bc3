"""The test harness: one throw-away PostgreSQL per test session, a template database per
migration state, and a fresh clone of the right template for every test.

The server comes from reserve.rollout.ephemeral (which runs PostgreSQL as an unprivileged
user when the tests run as root), or from TEST_DATABASE_URL: the URL of an existing
server and a role that may create databases (its database is the maintenance one).
Templates are migrated once per session; each test gets ``CREATE DATABASE … TEMPLATE``,
managed by pytest-postgresql's DatabaseJanitor, so the suite stays fast as it grows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import URL, make_url

from reserve.rollout import alembic_runner
from reserve.rollout.ephemeral import EphemeralPostgres
from tests.support import ONLINE, REVISIONS, Database, cloned, janitor

TEMPLATES = {"empty": None, "baseline": "0001_baseline", "pre_swap": REVISIONS[-2], "head": "head"}


class ExternalServer:
    """An already running server named by TEST_DATABASE_URL."""

    def __init__(self, raw: str) -> None:
        self._url = make_url(raw).set(drivername="postgresql+psycopg")

    def url(self, dbname: str = "postgres") -> URL:
        return self._url.set(database=dbname)

    @property
    def maintenance_db(self) -> str:
        return self._url.database or "postgres"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EphemeralPostgres | ExternalServer]:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield ExternalServer(external)
        return
    # Prepared transactions and logical decoding are ordinary in production: the suite's server allows both.
    with EphemeralPostgres(settings={"max_prepared_transactions": "10", "wal_level": "logical"}) as server:
        yield server


@pytest.fixture(scope="session")
def templates(pg_server: EphemeralPostgres | ExternalServer) -> Iterator[dict[str, str]]:
    """One template database per migration state, migrated once for the whole session."""
    janitors = []
    names = {}
    try:
        for state, revision in TEMPLATES.items():
            name = f"reserve_test_{state}_tmpl_{os.getpid()}"
            template = janitor(pg_server, name, as_template=True)
            template.init()
            janitors.append(template)
            if revision:
                # head through the online method, opted into: its window open, as most head tests need it
                alembic_runner.upgrade(pg_server.url(name), revision, ONLINE if revision == "head" else None)
            names[state] = name
        yield names
    finally:
        for template in reversed(janitors):
            template.drop()


@pytest.fixture(scope="session")
def make_template(pg_server, templates) -> Iterator[Callable[[str, Callable[[Database], None]], str]]:
    """``make_template(state, prepare)``: a template database cloned from ``templates[state]`` and prepared by
    ``prepare(database)`` (a test module's own starting point, built once per session); its name."""
    with contextlib.ExitStack() as stack:
        def make(state: str, prepare: Callable[[Database], None]) -> str:
            database = stack.enter_context(cloned(pg_server, templates[state]))
            prepare(database)
            return database.name
        yield make


@pytest.fixture
def clone(pg_server) -> Iterator[Callable[[str], Database]]:
    """``clone(template)``: a fresh database made from the template database ``template``, dropped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda template: stack.enter_context(cloned(pg_server, template))


@pytest.fixture
def empty_db(pg_server, templates) -> Iterator[Database]:
    """A fresh, empty database (no revision applied)."""
    with cloned(pg_server, templates["empty"]) as database:
        yield database


@pytest.fixture
def baseline_db(pg_server, templates) -> Iterator[Database]:
    """A fresh database at 0001_baseline: the schema before the change."""
    with cloned(pg_server, templates["baseline"]) as database:
        yield database


@pytest.fixture
def pre_swap_db(pg_server, templates) -> Iterator[Database]:
    """A fresh database at the revision below the swap (the old guard), no rows."""
    with cloned(pg_server, templates["pre_swap"]) as database:
        yield database


@pytest.fixture
def head_db(pg_server, templates) -> Iterator[Database]:
    """A fresh database at head: the change applied online, its window open (`close_window()` closes it)."""
    with cloned(pg_server, templates["head"]) as database:
        yield database
