"""What the catalog must look like at each revision, and how a live database differs.

The expected catalog of every revision is shipped in ``reserve/expected/<rev>.txt``,
produced by migrating an empty throw-away database step by step
(``python -m reserve.expectations --write``, run by ``make expected``); a test
fails when a revision changes and the files were not regenerated.

A live database is compared only on this project's own objects, so other
tables and functions of the same database (Supabase has many) are not drift,
and only on sections that do not depend on where extensions were installed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from reserve import catalog

COMPARED_SECTIONS = ("types", "tables", "columns", "constraints", "indexes", "functions", "policies", "triggers")
_EXPECTED = resources.files("reserve") / "expected"


def expected(revision: str) -> catalog.Snapshot:
    """The shipped expected catalog of ``revision`` (KeyError when there is none)."""
    path = _EXPECTED / f"{revision}.txt"
    if not path.is_file():
        raise KeyError(revision)
    return parse(path.read_text(encoding="utf-8"))


def parse(text: str) -> catalog.Snapshot:
    """Read back ``catalog.as_text`` output."""
    snap: catalog.Snapshot = {}
    section = None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            snap[section] = []
        elif line and section is not None:
            snap[section].append(line)
    return snap


def revisions() -> list[str]:
    """Revisions with a shipped expectation, oldest first (file names sort in chain order)."""
    return sorted(p.name.removesuffix(".txt") for p in _EXPECTED.iterdir() if p.name.endswith(".txt"))


def _our_objects() -> re.Pattern[str]:
    """A pattern matching lines that mention a table, type or function of any revision of this project."""
    names: set[str] = set()
    for snap in (expected(revision) for revision in revisions()):
        for section in ("tables", "types", "functions"):
            for line in snap.get(section, []):
                qualified = re.match(r"(\w+)\.(\w+)", line)
                if qualified:
                    names.add(f"{qualified.group(1)}\\.{qualified.group(2)}")
    return re.compile(r"\b(?:" + "|".join(sorted(names)) + r")\b(?![\w])")


@dataclass(frozen=True)
class Difference:
    section: str
    kind: str  # "missing" (expected, not live) or "unexpected" (live, not expected)
    line: str

    def __str__(self) -> str:
        sign = "-" if self.kind == "missing" else "+"
        return f"{sign} [{self.section}] {self.line}"


def compare(expected_snap: catalog.Snapshot, live: catalog.Snapshot) -> list[Difference]:
    """How ``live`` differs from ``expected_snap`` on this project's objects."""
    ours = _our_objects()
    differences: list[Difference] = []
    for section in COMPARED_SECTIONS:
        want = set(expected_snap.get(section, []))
        have = {line for line in live.get(section, []) if ours.search(line)}
        differences += [Difference(section, "missing", line) for line in sorted(want - have)]
        differences += [Difference(section, "unexpected", line) for line in sorted(have - want)]
    return differences


def drift(conn: psycopg.Connection[Any], revision: str) -> list[Difference]:
    """Differences between the live catalog and what ``revision`` should have produced."""
    return compare(expected(revision), catalog.snapshot(conn))


def summarize(differences: list[Difference]) -> list[str]:
    """Readable reasons naming the objects, e.g. 'constraint allocations_no_overlap is missing'."""
    return [str(d) for d in differences]


def write_all() -> None:
    """Regenerate reserve/expected/ by migrating a throw-away database one revision at a time."""
    from pathlib import Path

    from reserve import alembic_runner, db
    from reserve.ephemeral import EphemeralPostgres

    target = Path(str(_EXPECTED))
    target.mkdir(exist_ok=True)
    revisions = [rev.revision for rev in alembic_runner.scripts().walk_revisions("base", "heads")][::-1]
    with EphemeralPostgres() as server:
        url = server.url()
        for revision in revisions:
            alembic_runner.upgrade(url, revision)
            with psycopg.connect(db.libpq_url(url)) as conn:
                (target / f"{revision}.txt").write_text(catalog.as_text(catalog.snapshot(conn)), encoding="utf-8")
            print(f"wrote reserve/expected/{revision}.txt")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m reserve.expectations --write")
    write_all()
