"""reserve rehearse: the whole rollout on a throw-away database, and its evidence bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reserve.rollout import evidence, rehearsal

pytestmark = pytest.mark.slow  # `make test-slow`: whole rehearsals (one with a standby)


@pytest.fixture(scope="module")
def bundle(pg_server, templates, tmp_path_factory) -> tuple[rehearsal.Result, Path]:
    out = tmp_path_factory.mktemp("artifacts")
    return rehearsal.rehearse(pg_server.url(), rows=5000, out_dir=out, progress=False), out  # online: the default


def test_rehearsal_is_go_and_runs_every_step(bundle):
    result, _ = bundle
    assert result.summary["verdict"] == "go", result.render()
    names = [step["name"] for step in result.summary["steps"]]
    for expected in ("preflight", "upgrade 0004_allocations_no_overlap", "verify head", "performance probe",
                     "downgrade -1", "verify rollback", "upgrade head again", "diff", "integration checks"):
        assert expected in names


def test_rehearsal_writes_the_whole_evidence_bundle(bundle):
    result, _ = bundle
    for name in evidence.ARTIFACTS:
        assert (result.out / name).is_file(), name
    summary = json.loads((result.out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    # What each step locked, from the lock trace (exact), not from the polled hold (a measurement).
    swap = steps["upgrade 0004_allocations_no_overlap"]["lock_trace"]["revisions"]["upgrade 0004_allocations_no_overlap"]
    assert swap["strongest"]["public.allocations"] == "ACCESS EXCLUSIVE"
    results = steps["upgrade 0002_confirmation_results"]["lock_trace"]["revisions"]
    assert "public.allocations" not in results["upgrade 0002_confirmation_results"]["strongest"]
    assert all(step["lock_trace"]["undeclared"] == [] for step in steps.values() if step["lock_trace"])
    assert summary["lock_trace_statements"] > 0
    # The online method (opted into): the swap's one ACCESS EXCLUSIVE hold is the exchange, timed by the swap.
    assert summary["swap_method"] == "online"
    reported = steps["upgrade 0004_allocations_no_overlap"]["reported_holds"]
    assert [hold["step"] for hold in reported] == ["exchange"], reported
    assert 0 < summary["lock_hold_s"]["upgrade 0004_allocations_no_overlap"] < 1.0
    assert {hold["step"] for hold in steps["downgrade -1"]["reported_holds"]} == {
        "exchange", "dropping the machinery"}  # inside the window: an exchange back
    assert "Swap method: online" in (result.out / "SUMMARY.md").read_text()
    locks_txt = (result.out / "locks.txt").read_text()
    assert "## rehearsal step: downgrade -1" in locks_txt and "+ ACCESS EXCLUSIVE on public.allocations" in locks_txt
    assert "5 passed, 0 failed" in (result.out / "tests.txt").read_text()
    assert "allocations_no_overlap: EXCLUDE USING gist" in (result.out / "new-constraint.txt").read_text()


def test_no_artifact_holds_the_password_or_a_restaurant_name(bundle, pg_server):
    result, _ = bundle
    password = pg_server.url().password
    for path in result.out.iterdir():  # timeline.png too: bytes, not text
        content = path.read_bytes()
        assert password.encode() not in content, path.name
        assert b"Restaurant 1" not in content, path.name


def test_two_bundles_started_in_the_same_second_get_two_directories(tmp_path: Path):
    first, second = rehearsal._output_dir(tmp_path), rehearsal._output_dir(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_an_output_directory_that_cannot_be_written_is_a_setup_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(rehearsal.RehearsalSetupError, match="cannot write the evidence bundle"):
        rehearsal.rehearse(None, rows=1000, out_dir=blocker)


def test_the_locked_method_is_rehearsed_when_asked(pg_server, templates, tmp_path: Path):
    result = rehearsal.rehearse(pg_server.url(), rows=2000, out_dir=tmp_path, progress=False, swap_method="locked")
    assert result.summary["verdict"] == "go", result.render()
    assert result.summary["swap_method"] == "locked"
    steps = {step["name"]: step for step in result.summary["steps"]}
    assert steps["upgrade 0004_allocations_no_overlap"]["reported_holds"] == []  # no exchange: the build holds it
    assert "background" not in steps["preflight"]["detail"]
    trace = (result.out / "locks.txt").read_text()
    assert "DROP CONSTRAINT allocations_resource_window_excl" in trace and "ADD CONSTRAINT allocations_no_overlap" in trace


def test_the_summary_links_the_timeline_or_says_why_there_is_none(bundle):
    result, _ = bundle
    summary_md = (result.out / "SUMMARY.md").read_text()
    steps = {step["name"]: step for step in result.summary["steps"]}
    assert steps["upgrade 0004_allocations_no_overlap"]["wal_bytes"] > 0  # the standby's copy is written to WAL
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in summary_md and not (result.out / "timeline.png").exists()
        return
    assert "![timeline](timeline.png)" in summary_md
    assert (result.out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def standby_bundle(tmp_path_factory) -> rehearsal.Result:
    """The rehearsal on its own throw-away server with a hot standby (the TEST_DATABASE_URL server has none)."""
    out = tmp_path_factory.mktemp("standby-artifacts")
    return rehearsal.rehearse(None, rows=2000, out_dir=out, progress=False, standby=True)


def test_rehearsal_with_a_standby_reports_what_the_replica_saw_at_every_step(standby_bundle):
    result = standby_bundle
    assert result.summary["verdict"] == "go", result.render()
    steps = {step["name"]: step for step in result.summary["steps"]}
    assert all(step["standby"] is not None and step["standby"]["caught_up"] for step in steps.values())
    swap = steps["upgrade 0004_allocations_no_overlap"]["standby"]
    assert swap["reads"] > 0 and swap["cancelled_reads"] == 0 and swap["read_errors"] == {}
    overall = result.summary["standby"]
    assert overall["settings"]["max_standby_streaming_delay"] == "30000ms"  # the default, as the issue asks
    assert overall["reads"] == sum(step["standby"]["reads"] for step in steps.values())
    assert overall["not_caught_up"] == []
    summary_md = (result.out / "SUMMARY.md").read_text()
    assert "## What the hot standby saw" in summary_md
    assert "| upgrade 0004_allocations_no_overlap |" in summary_md.split("## What the hot standby saw")[1]


def test_steps_are_placed_on_the_timeline_where_they_began(standby_bundle):
    starts = [step["started_s"] for step in standby_bundle.summary["steps"]]
    assert starts == sorted(starts) and starts[0] >= 0
    assert starts[-1] >= sum(step["seconds"] for step in standby_bundle.summary["steps"][:-1])


def test_a_standby_is_not_made_of_the_database_url_server(pg_server, tmp_path: Path):
    with pytest.raises(rehearsal.RehearsalSetupError, match="cannot make a replica"):
        rehearsal.rehearse(pg_server.url(), rows=1000, out_dir=tmp_path, progress=False, standby=True)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
