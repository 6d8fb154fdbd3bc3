"""squawk over every revision's offline SQL, one step and one direction at a time (tools.lint_sql)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REVISIONS, ROOT
from tools import lint_sql

# Only the tests that run squawk need it; `make test` installs it (the lint extra).
needs_squawk = pytest.mark.skipif(lint_sql.squawk_binary() is None,
                                  reason="squawk is not installed (pip install -e '.[lint]')")


def test_every_step_of_the_chain_is_linted_in_both_directions():
    assert [stem for stem, _, _ in lint_sql.steps()] == [
        f"{revision}.{direction}" for revision in REVISIONS for direction in ("upgrade", "downgrade")]


@needs_squawk
def test_the_offline_sql_of_every_revision_is_clean_under_squawk():
    result = subprocess.run([sys.executable, "-m", "tools.lint_sql"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is clean" in result.stdout


def test_each_silence_names_its_statement_and_gives_a_reason():
    steps = {stem for stem, _, _ in lint_sql.steps()}
    for silence in lint_sql.SILENCED:
        assert silence.step in steps, silence
        assert len(silence.reason) > 30 and "--" not in silence.reason and "\n" not in silence.reason, silence
        re.compile(silence.line)
    # One silence per rule and statement: never a whole rule, never a whole file.
    assert len({(s.step, s.line, s.rule) for s in lint_sql.SILENCED}) == len(lint_sql.SILENCED)


def test_exclusion_constraints_are_silenced_per_statement_because_postgresql_has_no_not_valid_for_them(tmp_path: Path):
    files, stale = lint_sql.render(tmp_path)
    assert stale == []
    upgrade = (tmp_path / "0004_allocations_no_overlap.upgrade.sql").read_text()
    lines = upgrade.splitlines()
    add = next(i for i, line in enumerate(lines) if "ADD CONSTRAINT allocations_no_overlap EXCLUDE" in line)
    assert lines[add - 1].startswith("-- squawk-ignore constraint-missing-not-valid -- PostgreSQL accepts NOT VALID only")


@needs_squawk
def test_a_risky_statement_that_nobody_silenced_is_a_finding(tmp_path: Path):
    risky = tmp_path / "risky.sql"
    risky.write_text("SET lock_timeout = '2s';\nSET statement_timeout = '1min';\nBEGIN;\n"
                     "CREATE INDEX IF NOT EXISTS bookings_party_size_idx ON public.bookings (party_size);\nCOMMIT;\n")
    findings = lint_sql.run_squawk([risky])
    assert [(f.file, f.line, f.rule) for f in findings] == [("risky.sql", 4, "require-concurrent-index-creation")]


def test_a_silence_that_matches_nothing_any_more_is_reported_as_stale(tmp_path: Path, monkeypatch):
    ghost = lint_sql.Silence("ban-drop-table", "0003_confirm_v12.upgrade", r"DROP TABLE public\.nothing",
                             "a statement that was removed from the revision long ago")
    monkeypatch.setattr(lint_sql, "SILENCED", [*lint_sql.SILENCED, ghost])
    _, stale = lint_sql.render(tmp_path)
    assert [(f.file, f.rule) for f in stale] == [("0003_confirm_v12.upgrade.sql", "ban-drop-table")]
    assert "stale silence" in stale[0].message


def test_without_squawk_the_lint_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(lint_sql, "squawk_binary", lambda: None)
    assert lint_sql.main([]) == lint_sql.EXIT_NO_SQUAWK
    assert "squawk not found" in capsys.readouterr().err
