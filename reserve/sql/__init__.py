"""Versioned SQL shipped with the package.

Function bodies live in ``functions/<name>/v<N>.sql``, one file per released
version, never edited once released: a revision installs a version by name, so
its downgrade can restore the previous body byte for byte. Schema scripts that
are too long to read as Python live in ``schema/``.
"""

from __future__ import annotations

from importlib import resources

_ROOT = resources.files(__name__)


def read(relative_path: str) -> str:
    """Return the text of a SQL file shipped in this package."""
    return (_ROOT / relative_path).read_text(encoding="utf-8")


def function_sql(name: str, version: str) -> str:
    """Return the SQL that installs ``version`` (e.g. ``"v12"``) of function ``name``."""
    return read(f"functions/{name}/{version}.sql")
