"""Scratch databases: a new, uniquely named, empty database for one run, dropped when it ends.

The rehearsal and the soak each need one: on a throw-away server they start
(reserve.rollout.ephemeral), or on the server of DATABASE_URL. Names carry the time
and a random suffix, so two runs started in the same second never collide.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import UsageError
from reserve.rollout.ephemeral import EphemeralPostgres


class ScratchDatabaseError(UsageError):
    """The scratch database could not be created (or the server may not be used for one): exit 2."""


def unique_name(prefix: str) -> str:
    """``<prefix>_<UTC time>_<6 random hex digits>``: sortable by time, unique across concurrent runs."""
    return f"{prefix}_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"


@contextmanager
def scratch_database(url: URL | None, prefix: str, *, local_only: bool = False) -> Iterator[URL]:
    """A new empty database: on a throw-away server when ``url`` is None, else created (and finally dropped)
    on the server of ``url``. ``local_only`` refuses a server that is not on this machine (load and DDL)."""
    with ExitStack() as stack:
        if url is None:
            url = stack.enter_context(EphemeralPostgres()).url("postgres")
        elif local_only and not db.is_local(url):
            raise ScratchDatabaseError(f"refusing to use {db.masked(url)}: only a server on this machine is allowed")
        name = unique_name(prefix)
        with db.connect(url, autocommit=True) as admin:
            try:
                admin.execute(f'CREATE DATABASE "{name}"')
            except psycopg.Error as exc:
                raise ScratchDatabaseError(f"cannot create the scratch database {name} on {db.masked(url)}: "
                                           f"{str(exc).splitlines()[0]}") from None
        try:
            yield url.set(database=name)
        finally:
            with db.connect(url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
