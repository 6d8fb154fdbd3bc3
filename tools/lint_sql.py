"""Lint every revision's offline SQL with squawk: ``python -m tools.lint_sql``.

Each step of the chain is rendered on its own, in both directions
(``alembic upgrade <prev>:<rev> --sql`` and ``alembic downgrade <rev>:<prev> --sql``),
exactly as a DBA would review it, and squawk (``squawk-cli``, the ``lint`` extra)
checks each file as PostgreSQL 15 SQL.

Findings that are accepted are silenced here and only here, in ``SILENCED``:
one entry per rule and statement, with the reason next to it. The entry becomes a
``-- squawk-ignore <rule> -- <reason>`` comment above the matching line of the
rendered file, so squawk itself does the silencing, per statement, and the
reason travels with the SQL (``--keep DIR`` writes the files for review). An
entry that no longer matches any line is itself a finding: a silence never
outlives the statement it was written for.

Exit codes: 0 clean, 1 findings (or a stale silence), 2 squawk is not installed
or failed to run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reserve.rollout import alembic_runner
from reserve.schema import revisions

PG_VERSION = "15.0"
EXIT_CLEAN, EXIT_FINDINGS, EXIT_NO_SQUAWK = 0, 1, 2


@dataclass(frozen=True)
class Silence:
    """Accept ``rule`` on the line of ``step``'s SQL that matches ``line`` (a regex, searched
    from the start of the line, leading blanks allowed), because of ``reason``."""

    rule: str
    step: str  # a rendered file's name: "<revision>.upgrade" or "<revision>.downgrade"
    line: str
    reason: str


_BASELINE_DOWN = ("0001_baseline's downgrade removes everything the baseline created, by design: "
                  "it exists for throw-away databases; production is adopted at 0001 and never goes below it")

SILENCED: list[Silence] = [
    # ---- 0001_baseline
    Silence("prefer-text-field", "0001_baseline.upgrade", r"version_num VARCHAR\(32\)",
            "alembic_version is Alembic's own bookkeeping table, created by Alembic itself; its column never changes"),
    Silence("prefer-bigint-over-int", "0001_baseline.upgrade", r"capacity integer",
            "the baseline reproduces the live schema (capacity is an int there); `reserve adopt` compares it "
            "column by column, and seats per table never near 2^31"),
    Silence("prefer-bigint-over-int", "0001_baseline.upgrade", r"party_size integer",
            "the baseline reproduces the live schema (party_size is an int there); guests per booking never "
            "near 2^31"),
    Silence("ban-drop-schema", "0001_baseline.downgrade", r"DROP SCHEMA IF EXISTS reserve_archive", _BASELINE_DOWN),
    Silence("ban-drop-function", "0001_baseline.downgrade", r"DROP FUNCTION", _BASELINE_DOWN),
    Silence("ban-drop-table", "0001_baseline.downgrade", r"DROP TABLE public\.feature_flag_overrides", _BASELINE_DOWN),
    Silence("ban-drop-type", "0001_baseline.downgrade", r"DROP TYPE", _BASELINE_DOWN),
    # ---- 0003a_operations
    Silence("constraint-missing-not-valid", "0003a_operations.upgrade",
            r"ALTER TABLE public\.feature_flag_overrides VALIDATE CONSTRAINT",
            "feature_flag_overrides is tiny (one row per venue and flag), so validating under the ADD's lock "
            "holds it for milliseconds; a separate transaction would break one-transaction-per-revision and "
            "could leave a NOT VALID check behind. Rows that would fail are refused, by id, before the ADD"),
    Silence("ban-drop-function", "0003a_operations.downgrade",
            r"DROP FUNCTION public\.purge_booking_confirmation_results",
            "the downgrade removes what 0003a added; its only callers (`reserve retention`, pg_cron) come with it"),
    Silence("ban-drop-constraint", "0003a_operations.downgrade",
            r"ALTER TABLE public\.feature_flag_overrides DROP CONSTRAINT feature_flag_overrides_adjacency_mode_check",
            "the downgrade removes the check 0003a added; the code before 0003a never relied on it"),
    # ---- 0004_allocations_no_overlap
    Silence("ban-drop-constraint", "0004_allocations_no_overlap.upgrade",
            r"ALTER TABLE public\.allocations DROP CONSTRAINT allocations_resource_window_excl",
            "the guard swap: allocations_no_overlap replaces it in the same transaction, under the same lock"),
    Silence("require-concurrent-index-deletion", "0004_allocations_no_overlap.upgrade",
            r"DROP INDEX public\.allocations_resource_window_idx",
            "runs under the ACCESS EXCLUSIVE lock the swap already holds, so a concurrent drop would not shorten "
            "any wait, and DROP INDEX CONCURRENTLY cannot run inside the revision's transaction"),
    Silence("constraint-missing-not-valid", "0004_allocations_no_overlap.upgrade",
            r"ALTER TABLE public\.allocations ADD CONSTRAINT allocations_no_overlap EXCLUDE",
            "PostgreSQL accepts NOT VALID only for CHECK and FOREIGN KEY constraints, not EXCLUDE; the lock is "
            "bounded instead (lock_timeout with retries) and predicted by `reserve preflight`"),
    Silence("ban-drop-constraint", "0004_allocations_no_overlap.downgrade",
            r"ALTER TABLE public\.allocations DROP CONSTRAINT allocations_no_overlap",
            "the emergency rollback: the old guard replaces it in the same transaction, under the same lock"),
    Silence("constraint-missing-not-valid", "0004_allocations_no_overlap.downgrade",
            r"ALTER TABLE public\.allocations ADD CONSTRAINT allocations_resource_window_excl EXCLUDE",
            "PostgreSQL accepts NOT VALID only for CHECK and FOREIGN KEY constraints, not EXCLUDE; rows that would "
            "break it are refused, by id, before any lock"),
    Silence("prefer-robust-stmts", "0004_allocations_no_overlap.downgrade",
            r"ALTER TABLE public\.allocations DROP CONSTRAINT allocations_no_overlap",
            "the guard swap runs inside the revision's transaction (BEGIN above, COMMIT below): it commits whole or "
            "not at all, and a rerun skips it once the old guard is back; only the index build after the COMMIT "
            "runs outside a transaction"),
    Silence("prefer-robust-stmts", "0004_allocations_no_overlap.downgrade",
            r"ALTER TABLE public\.allocations ADD CONSTRAINT allocations_resource_window_excl EXCLUDE",
            "the guard swap runs inside the revision's transaction (BEGIN above, COMMIT below): it commits whole or "
            "not at all, and a rerun skips it once the old guard is back; only the index build after the COMMIT "
            "runs outside a transaction"),
    Silence("prefer-robust-stmts", "0004_allocations_no_overlap.downgrade",
            r"CREATE INDEX CONCURRENTLY reserve_pending_allocations_resource_window_idx",
            "the statement before it drops any leftover pending index; IF NOT EXISTS would instead keep an INVALID "
            "index left by an interrupted concurrent build"),
    Silence("renaming-object", "0004_allocations_no_overlap.downgrade",
            r"ALTER INDEX public\.reserve_pending_allocations_resource_window_idx RENAME TO",
            "the index was just built under a pending name that nothing refers to; the rename gives it the name "
            "the old schema had"),
]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int  # 1-based
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"


def steps() -> list[tuple[str, str, str]]:
    """(file stem, direction, revision range) for every step of the chain, both ways."""
    out = []
    previous = "base"
    for revision in revisions.chain():
        out.append((f"{revision}.upgrade", "upgrade", f"{previous}:{revision}"))
        out.append((f"{revision}.downgrade", "downgrade", f"{revision}:{previous}"))
        previous = revision
    return out


def apply_silences(step: str, text: str) -> tuple[str, list[Silence]]:
    """``text`` with a squawk-ignore comment above every line a silence of ``step`` matches;
    and the silences of ``step`` that matched nothing."""
    mine = [s for s in SILENCED if s.step == step]
    used: set[Silence] = set()
    lines = text.splitlines()
    out: list[str] = []
    for line in lines:
        hits = [s for s in mine if re.match(r"\s*" + s.line, line)]
        if hits:
            indent = line[: len(line) - len(line.lstrip())]
            # squawk reads only the comment right above a statement: every rule of it goes into that one line.
            rules = ", ".join(s.rule for s in hits)
            out.append(f"{indent}-- squawk-ignore {rules} -- {' | '.join(s.reason for s in hits)}")
            used.update(hits)
        out.append(line)
    return "\n".join(out) + "\n", [s for s in mine if s not in used]


def render(directory: Path) -> tuple[list[Path], list[Finding]]:
    """Write each step's offline SQL, silences applied, into ``directory``; the stale silences as findings."""
    files, stale = [], []
    for stem, direction, revision_range in steps():
        text, unused = apply_silences(stem, alembic_runner.offline_sql(direction, revision_range))
        path = directory / f"{stem}.sql"
        path.write_text(text, encoding="utf-8")
        files.append(path)
        stale += [Finding(path.name, 0, s.rule, f"stale silence: nothing matches {s.line!r}") for s in unused]
    return files, stale


def squawk_binary() -> str | None:
    """The squawk of this interpreter's environment (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return str(beside)
    return shutil.which("squawk")


class SquawkFailed(RuntimeError):
    """squawk is missing, or did not produce a report."""


def run_squawk(files: list[Path]) -> list[Finding]:
    binary = squawk_binary()
    if binary is None:
        raise SquawkFailed("squawk not found: install the lint extra (pip install -e '.[lint]')")
    result = subprocess.run(
        [binary, f"--pg-version={PG_VERSION}", "--reporter=json", *map(str, files)],
        capture_output=True, text=True, cwd=files[0].parent if files else None, timeout=120,
    )
    try:
        raw = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise SquawkFailed(f"squawk failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                           ) from None
    return [Finding(Path(item["file"]).name, int(item["line"]) + 1, item["rule_name"], item["message"]) for item in raw]


def lint(keep: Path | None = None) -> list[Finding]:
    """Every finding over the whole chain (empty: clean). ``keep``: also leave the rendered files there."""
    with tempfile.TemporaryDirectory(prefix="reserve-lint-sql-") as scratch:
        directory = keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        files, stale = render(directory)
        return stale + run_squawk(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lint_sql", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, metavar="DIR", help="Write the rendered SQL files to DIR.")
    args = parser.parse_args(argv)
    try:
        findings = lint(args.keep)
    except SquawkFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_SQUAWK
    for finding in findings:
        print(finding)
    count = len(steps())
    if findings:
        print(f"{len(findings)} finding(s) in the offline SQL of {count} steps: fix the revision, or silence the "
              "statement in tools/lint_sql.py SILENCED with the reason", file=sys.stderr)
        return EXIT_FINDINGS
    print(f"squawk: the offline SQL of {count} steps is clean ({len(SILENCED)} accepted finding(s), each silenced "
          "with its reason in tools/lint_sql.py)")
    return EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main())
