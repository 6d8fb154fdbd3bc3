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


def function_names() -> list[str]:
    """Every function this package ships a body for."""
    return sorted(entry.name for entry in (_ROOT / "functions").iterdir() if entry.is_dir())


def function_versions(name: str) -> list[str]:
    """The released versions of function ``name``, oldest first (``v1``, ``v2``, ... ``v12``)."""
    files = [entry.name.removesuffix(".sql") for entry in (_ROOT / "functions" / name).iterdir()
             if entry.name.endswith(".sql")]
    return sorted(files, key=lambda version: int(version.removeprefix("v")))
