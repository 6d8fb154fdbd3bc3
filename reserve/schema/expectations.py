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

SWAP_REVISION = revisions.SWAP_REVISION
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
    """The revisions of the chain that have a shipped expectation, in chain order (window.txt is not one)."""
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
        have = {line for line in live.get(section, []) if ours.search(line) or MACHINERY in line}
        differences += [Difference(section, "missing", line) for line in sorted(want - have)]
        differences += [Difference(section, "unexpected", line) for line in sorted(have - want)]
    return differences


# Catalog lines of the online swap's machinery (schema reserve_swap and the capture's triggers).
MACHINERY = "reserve_swap"
# The machinery an online swap leaves on purpose, each shipped like a revision's catalog: expected/window.txt
# (after an upgrade: the previous table kept in step) and expected/retired.txt (after a rollback that could
# not drop the table it replaced at once: that table, emptied, no capture).
WINDOW, RETIRED = "window", "retired"
# A `reserve swap finish` interrupted after its first step: the window's machinery without the capture's
# triggers (the previous table retired at head, to be dropped by the next finish). Derived from window.txt.
CLOSING = "closing"
_CAPTURE_TRIGGERS = re.compile(r"\breserve_swap_capture(?:_truncate)?\b")


def expected_machinery(state: str) -> catalog.Snapshot:
    """The machinery's catalog in ``state``, as shipped (CLOSING: the window's, without the capture)."""
    if state != CLOSING:
        return expected(state)
    return {section: [line for line in lines if not _CAPTURE_TRIGGERS.search(line)]
            for section, lines in expected(WINDOW).items()}


def without_machinery(live: catalog.Snapshot) -> catalog.Snapshot:
    """The catalog without the online swap's machinery (every line naming reserve_swap)."""
    return {section: [line for line in lines if MACHINERY not in line] for section, lines in live.items()}


def machinery(live: catalog.Snapshot) -> catalog.Snapshot:
    return {section: [line for line in lines if MACHINERY in line] for section, lines in live.items()}


def machinery_is(state: str, live: catalog.Snapshot) -> bool:
    """Is the machinery in ``live`` exactly what the swap leaves in ``state`` (WINDOW, CLOSING or RETIRED)?"""
    want = expected_machinery(state)
    have = machinery(live)
    return all(sorted(want.get(section, [])) == sorted(have.get(section, [])) for section in set(want) | set(have))


def left_on_purpose(revision: str) -> tuple[str, ...]:
    """The machinery states ``revision`` may leave: WINDOW (or CLOSING) at the swap's revision, RETIRED at the
    one below it."""
    chain = revisions.chain()
    return {SWAP_REVISION: (WINDOW, CLOSING), chain[chain.index(SWAP_REVISION) - 1]: (RETIRED,)}.get(revision, ())


def machinery_left(revision: str, live: catalog.Snapshot) -> str | None:
    """The machinery state ``live`` holds, exactly as shipped, that ``revision`` may leave; else None."""
    if not any(machinery(live).values()):
        return None
    return next((state for state in left_on_purpose(revision) if machinery_is(state, live)), None)


def differences(revision: str, live: catalog.Snapshot) -> list[Difference]:
    """How ``live`` differs from what ``revision`` should have produced. Where ``revision`` may leave the swap's
    machinery on purpose and some of it is there, it is compared with the shipped state (so a dropped trigger
    of the window is one missing line, not a page of unexpected ones)."""
    states = left_on_purpose(revision)
    want = expected(revision)
    if states and any(machinery(live).values()):
        extra = expected_machinery(machinery_left(revision, live) or states[0])
        want = {section: want.get(section, []) + extra.get(section, []) for section in set(want) | set(extra)}
    return compare(want, live)


def drift(conn: psycopg.Connection[Any], revision: str) -> list[Difference]:
    """Differences between the live catalog and what ``revision`` should have produced."""
    return differences(revision, catalog.snapshot(conn))


def reasons(differences: list[Difference]) -> list[str]:
    """Readable reasons naming the objects, e.g. 'constraint allocations_no_overlap is missing'."""
    return [str(d) for d in differences]
