"""What the catalog must look like at each revision, and how a live database differs.

The expected catalog of every revision is shipped in ``reserve/schema/expected/<rev>.txt``,
produced by migrating an empty throw-away database step by step
(``python -m tools.expected``, run by ``make expected``); a test fails when a
revision changes and the files were not regenerated.

A live database is compared only on this project's own objects, so other
tables and functions of the same database (Supabase has many) are not drift,
and only on sections that do not depend on where extensions were installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from reserve.schema import catalog, revisions

COMPARED_SECTIONS = ("types", "tables", "columns", "constraints", "indexes", "functions", "policies", "triggers")
_EXPECTED = resources.files("reserve.schema") / "expected"


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


def shipped() -> list[str]:
    """The revisions of the chain that have a shipped expectation, in chain order."""
    return [revision for revision in revisions.chain() if (_EXPECTED / f"{revision}.txt").is_file()]


def _our_objects() -> re.Pattern[str]:
    """A pattern matching lines that mention a table, type or function of any revision of this project."""
    names: set[str] = set()
    for snap in (expected(revision) for revision in shipped()):
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
