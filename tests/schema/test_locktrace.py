"""The lock trace: after every statement of a revision, the table locks the migrating session holds, checked
against what the revision declares (reserve.schema.locks.DECLARED)."""

from __future__ import annotations

from pathlib import Path

from reserve.rollout import alembic_runner
from reserve.schema import locks, locktrace
from tests.support import REVISIONS, Database, reliability_figure


def _chain_up_and_down(db: Database) -> tuple[locktrace.LockTrace, locktrace.LockTrace]:
    up, down = locktrace.LockTrace(), locktrace.LockTrace()
    alembic_runner.upgrade(db.url, "head", trace=up)
    alembic_runner.downgrade(db.url, "base", trace=down)
    return up, down


def test_no_revision_takes_a_lock_it_does_not_declare_up_or_down(empty_db: Database):
    up, down = _chain_up_and_down(empty_db)
    assert [s.step for s in up.steps] == [f"upgrade {r}" for r in REVISIONS]
    assert [s.step for s in down.steps] == [f"downgrade {r}" for r in reversed(REVISIONS)]
    assert all(s.completed and s.statements for s in up.steps + down.steps)
    assert locktrace.undeclared(up.steps + down.steps) == []
    up_count, down_count = (sum(len(s.statements) for s in trace.steps) for trace in (up, down))
    assert f"({up_count + down_count} statements: {up_count} up, {down_count} down)" in reliability_figure(
        "locks actually taken")
    # The declaration is not vacuous: the trace saw the locks it allows.
    swap = next(s for s in up.steps if s.revision == REVISIONS[-1])
    assert swap.strongest()["public.allocations"] == "ACCESS EXCLUSIVE"
    results = next(s for s in up.steps if s.revision == "0002_confirmation_results")
    assert results.strongest()["public.bookings"] == "SHARE ROW EXCLUSIVE"


def test_a_lock_beyond_the_declaration_is_reported(empty_db: Database, monkeypatch):
    narrower = dict(locks.DECLARED)
    narrower["0002_confirmation_results"] = {
        **locks.DECLARED["0002_confirmation_results"],
        "upgrade": locks.StepLocks({"public.bookings": "ROW EXCLUSIVE"}),  # too weak, and restaurants missing
    }
    monkeypatch.setattr(locks, "DECLARED", narrower)
    empty_db.upgrade("0001_baseline")
    trace = locktrace.LockTrace()
    alembic_runner.upgrade(empty_db.url, "0002_confirmation_results", trace=trace)
    found = locktrace.undeclared(trace.steps)
    assert any("SHARE ROW EXCLUSIVE on public.bookings, stronger than the declared ROW EXCLUSIVE" in f for f in found)
    assert any("on public.restaurants, which the revision does not declare" in f for f in found)


def test_tables_a_step_creates_are_marked_not_checked(empty_db: Database):
    trace = locktrace.LockTrace()
    alembic_runner.upgrade(empty_db.url, "0001_baseline", trace=trace)
    held = [lock for statement in trace.steps[0].statements for lock in statement.held]
    assert held and all(lock.new for lock in held if lock.table != "public.alembic_version")
    created = [line for line in trace.render().splitlines() if "+ creates " in line]
    assert any("public.allocations," in line and "public.bookings," in line for line in created), created


def test_x_lock_trace_writes_the_trace_of_an_operators_run(baseline_db: Database, tmp_path: Path):
    target = tmp_path / "locks.txt"
    result = alembic_runner.run_cli(baseline_db.url, "-x", f"lock_trace={target}", "upgrade", "0002_confirmation_results")
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert text.startswith("upgrade 0002_confirmation_results\n  declared: SHARE ROW EXCLUSIVE on public.bookings")
    assert "+ SHARE ROW EXCLUSIVE on public.bookings" in text and "statements traced" in text
