"""bench.replicas: a tiny run on a real primary and hot standby, and its section of docs/BENCHMARKS.md."""

from __future__ import annotations

import json

import pytest

from bench import replicas

pytestmark = pytest.mark.slow  # `make test-slow`: a primary and a hot standby of its own


@pytest.fixture(scope="module")
def tiny() -> dict:
    # A short delay: each long report is cancelled after it, not after the default 30 s.
    return replicas.run((1500,), progress=lambda message: None,
                        standby_settings={"max_standby_streaming_delay": "1s"}) | {"timestamp": "t"}


def test_every_method_and_migration_is_measured_on_the_primary_and_the_standby(tiny):
    json.dumps(tiny)  # serializable as written to bench/results
    (size,) = tiny["sizes"]
    assert [(r["method"], r["migration"]) for r in size["runs"]] == [(r.method, r.label) for r in replicas.PLAN]
    for run in size["runs"]:
        seen = run["standby"]
        assert run["primary_hold_s"] > 0, run  # each swap takes ACCESS EXCLUSIVE on allocations once at least
        assert seen["reads"] > 0 and seen["caught_up"] and seen["read_errors"] == {}, run
    assert size["standby_settings"]["max_standby_streaming_delay"] == "1000ms"
    assert size["standby_settings"]["hot_standby_feedback"] == "off"  # as found, after the runs that set it on
    assert [r["feedback"] for r in size["runs"]] == [r.feedback for r in replicas.PLAN]
    with_report = [r for r in size["runs"] if r["report"]]
    assert len(with_report) == 3 and all(r["report"]["seconds"] is not None for r in with_report)
    # Whatever it conflicted with (the replayed lock, or a cleanup its snapshot needed), replay cancelled it.
    assert [r["report"]["cancelled_by_recovery"] for r in with_report] == [True, True, True], with_report


def test_the_replicas_section_replaces_only_its_own_part_of_the_benchmarks_doc(tiny, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\nProse.\n\n{replicas.BEGIN}\nold\n{replicas.END}\n\nMore prose.\n")
    replicas.refresh_docs(tiny, doc)
    text = doc.read_text()
    assert "Prose." in text and "More prose." in text and "\nold\n" not in text
    assert text.count("| 1,500 |") == len(replicas.PLAN)
    replicas.refresh_docs(tiny, doc)
    assert doc.read_text() == text  # refreshing again changes nothing
