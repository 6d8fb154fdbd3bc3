"""Connection settings: one place that reads DATABASE_URL and never leaks its password."""

from __future__ import annotations

import ipaddress
import os

import psycopg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from reserve.report import UsageError

ENV_VAR = "DATABASE_URL"


class DatabaseUrlError(UsageError):
    """DATABASE_URL is missing or not a PostgreSQL URL. The message never holds the password."""


# The PostgreSQL major version this package is tested on (the throw-away servers, preflight's server check).
REFERENCE_MAJOR = 15


def sqlalchemy_url(raw: str | None = None) -> URL:
    """Parse a ``postgresql://`` or ``postgresql+psycopg://`` URL, driven by psycopg 3."""
    raw = raw if raw is not None else os.environ.get(ENV_VAR)
    if not raw:
        raise DatabaseUrlError(f"{ENV_VAR} is not set: export {ENV_VAR}=postgresql://user@host:5432/dbname")
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number ("host:abc", "[::1/db")
        raise DatabaseUrlError(f"{ENV_VAR} is not a valid database URL") from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseUrlError(f"{ENV_VAR} must be a postgresql:// URL, not {url.get_backend_name()}://")
    return url.set(drivername="postgresql+psycopg")


def is_local(url: URL) -> bool:
    """Is the server on this machine: a unix socket, localhost, or any loopback address (127.0.0.0/8, ::1)?"""
    host = url.host or url.query.get("host")
    if not host or str(host).startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def libpq_url(url: URL) -> str:
    """The URL as libpq/psycopg understands it (``postgresql://``), password included: never print it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def masked(url: URL) -> str:
    """The URL for humans and logs, password replaced by ***."""
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def scrub(text: str, url: URL | None) -> str:
    """Remove the password of ``url`` from a message (drivers sometimes echo connection strings)."""
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    """Does ``table`` (schema-qualified, e.g. ``public.allocations``) exist in the connected database?"""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


class ConnectionFailed(UsageError):
    """The server could not be reached or refused the login. The message never holds the password."""


# How long a tool's statement may wait for a lock before it fails with a message naming who holds it,
# instead of hanging behind a long transaction. PGOPTIONS='-c lock_timeout=…' changes it.
TOOL_LOCK_TIMEOUT = "10s"


def session_options() -> str:
    """libpq ``options`` for a tool's session: PGOPTIONS, plus the tools' lock_timeout unless it sets one."""
    given = os.environ.get("PGOPTIONS", "")
    return given if "lock_timeout" in given else f"{given} -c lock_timeout={TOOL_LOCK_TIMEOUT}".strip()


def connect(url: URL, **kwargs: object) -> psycopg.Connection:
    """A psycopg connection to ``url``, failing with a one-line, password-free reason."""
    kwargs.setdefault("options", session_options())
    kwargs.setdefault("application_name", "reserve")
    try:
        return psycopg.connect(libpq_url(url), connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise connection_failed(exc, url) from None


def connection_failed(exc: BaseException, url: URL) -> ConnectionFailed:
    """The one-line, password-free reason why ``url`` could not be reached (for psycopg and SQLAlchemy alike)."""
    reason = " ".join(line.strip() for line in str(getattr(exc, "orig", None) or exc).strip().splitlines())
    return ConnectionFailed(f"cannot connect to {masked(url)}: {scrub(reason, url)}")
