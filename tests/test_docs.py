"""The tables and counts the docs restate from the code stay true to it."""

from __future__ import annotations

import ast
import re

import tests.test_bad_input as bad_input
from reserve.schema import expectations, locks, revisions
from tests.sql.test_rls_property import WORLDS
from tests.support import ROOT, reliability_figure
from tests.tenants import OWNER
from tools import lint_plpgsql, lint_sql

# PostgreSQL's table lock modes, weakest first (each conflicts with at least what the one before it does).
STRENGTH = ["ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
            "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"]
MACHINERY = "reserve_swap."  # the swap's own tables, made and dropped by the step: no application reads them
NUMBERS = {"three": 3, "ten": 10}


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
    return set(re.findall(r"\b(?<!ROW )(" + "|".join(sorted(STRENGTH, key=len, reverse=True)) + r")\b", cell))


def _declared(revision: str, direction: str) -> dict[str, str]:
    """Every table either method of the step declares, with its strongest mode (the swap has two methods)."""
    tables: dict[str, str] = {}
    for method in ("online", "locked"):
        for table, mode in locks.declared(revision, direction, method).tables.items():
            if not table.startswith(MACHINERY):
                tables[table.removeprefix("public.")] = max(mode, tables.get(table, mode), key=STRENGTH.index)
    return tables


def _tables_in(revision: str) -> set[str]:
    return {entry.split()[0].removeprefix("public.") for entry in expectations.expected(revision)["tables"]}


def test_the_readme_lock_table_has_every_revision_and_names_the_modes_each_declares_and_no_other():
    table = _lock_table()
    assert list(table) == revisions.chain()
    for revision, (upgrade, downgrade) in table.items():
        for direction, cell in (("upgrade", upgrade), ("downgrade", downgrade)):
            declared = _declared(revision, direction)
            named = _modes_named(cell)
            assert set(declared.values()) <= named, (revision, direction, cell)
            strongest = max((STRENGTH.index(mode) for mode in declared.values()), default=-1)
            # a weaker mode may be named (the rollback's index build after its commit), never a stronger one
            assert all(STRENGTH.index(mode) <= strongest for mode in named), (revision, direction, cell)
            if not declared:
                assert cell.startswith("nothing"), (revision, direction, cell)


def test_the_readme_lock_table_names_exactly_the_tables_each_step_declares():
    """Each table is named in backticks, or counted ("its ten tables") or "every table" the revision below has."""
    for revision, (upgrade, downgrade) in _lock_table().items():
        for direction, cell in (("upgrade", upgrade), ("downgrade", downgrade)):
            declared = _declared(revision, direction)
            named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", cell)) - {revision}
            assert named <= set(declared), (revision, direction, sorted(named - set(declared)))
            unnamed = set(declared) - named
            if not declared:
                continue  # "nothing": the other test holds it to that
            if "every table" in cell:
                assert unnamed <= _tables_in(revision) and set(declared) >= _tables_in(revision), (revision, direction)
                continue
            counted = sum(NUMBERS[word] for word in re.findall(r"\b(?:its|the) (\w+) tables\b", cell))
            assert len(unnamed) == counted, (revision, direction, sorted(unnamed))


def test_reliabilitys_counts_are_the_suites_own():
    """Counts in docs/RELIABILITY.md's figures; the traced statement count is pinned by test_locktrace."""
    faults = ast.parse((ROOT / "tests" / "migrations" / "test_faults.py").read_text(encoding="utf-8"))
    tests = [f for f in faults.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert f"| {len(tests) - 1} of {len(tests) - 1} (plus a control" in reliability_figure("faults injected and survived")
    bad = (len(bad_input.SQL_CASES) + len(bad_input.CLI_CASES) + len(bad_input.ALEMBIC_CASES)
           + len(bad_input.BAD_X_OPTIONS))
    assert f"| {bad} (SQL functions" in reliability_figure("bad inputs tried")
    assert f"every RLS table ({len(OWNER)} at head), {WORLDS} random worlds" in reliability_figure("tenant isolation")
    assert f"the {len(lint_plpgsql.shipped_names())} shipped PL/pgSQL functions" in reliability_figure("plpgsql_check")
    assert f"| {len(lint_sql.steps())} offline scripts" in reliability_figure("squawk")
    assert f"{len(lint_sql.SILENCED)} accepted findings silenced" in reliability_figure("squawk")
