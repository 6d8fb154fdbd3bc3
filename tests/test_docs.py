"""The README's tables that restate code stay true to it."""

from __future__ import annotations

import re

from reserve.schema import locks, revisions
from tests.support import ROOT


def _lock_table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("| revision | upgrade | downgrade |"):]
    rows = {}
    for line in block.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        revision, upgrade, downgrade = (cell.strip() for cell in line.strip("|").split("|"))
        rows[revision.strip("`")] = (upgrade, downgrade)
    return rows


def _modes_named(cell: str) -> set[str]:
    return set(re.findall(r"(ACCESS EXCLUSIVE|SHARE ROW EXCLUSIVE|SHARE UPDATE EXCLUSIVE|ACCESS SHARE)", cell))


def test_the_readme_lock_table_has_every_revision_and_names_the_modes_each_declares():
    table = _lock_table()
    assert list(table) == revisions.chain()
    for revision, (upgrade, downgrade) in table.items():
        for direction, cell in (("upgrade", upgrade), ("downgrade", downgrade)):
            declared = set(locks.declared(revision, direction, "online").tables.values()) | set(
                locks.declared(revision, direction, "locked").tables.values())  # the swap has two methods
            assert declared <= _modes_named(cell), (revision, direction, cell)
            if not declared:
                assert cell.startswith("nothing"), (revision, direction, cell)
