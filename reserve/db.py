"""Connection settings: one place that reads DATABASE_URL and never leaks its password."""

from __future__ import annotations

import os

import psycopg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_VAR = "DATABASE_URL"


class DatabaseUrlError(Exception):
    """DATABASE_URL is missing or not a PostgreSQL URL. The message never holds the password."""


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


def libpq_url(url: URL) -> str:
    """The URL as libpq/psycopg understands it (``postgresql://``), password included: never print it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def masked(url: URL | str) -> str:
    """The URL for humans and logs, password replaced by ***."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<invalid url>"
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def scrub(text: str, url: URL | None) -> str:
    """Remove the password of ``url`` from a message (drivers sometimes echo connection strings)."""
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text


class ConnectionFailed(Exception):
    """The server could not be reached or refused the login. The message never holds the password."""


def connect(url: URL, **kwargs: object) -> psycopg.Connection:
    """A psycopg connection to ``url``, failing with a one-line, password-free reason."""
    try:
        return psycopg.connect(libpq_url(url), connect_timeout=10, application_name="reserve", **kwargs)
    except psycopg.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).strip().splitlines())
        raise ConnectionFailed(f"cannot connect to {masked(url)}: {scrub(reason, url)}") from None
