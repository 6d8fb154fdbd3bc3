"""reserve monitor: the monitoring queries once, the exporter scraped over HTTP and parsed with prometheus_client's
parser, a port in use, and the ops/ alert rules (promtool) and dashboard checked against what is exposed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from reserve.capacity.confirm import confirm_hold
from reserve.cli import main
from reserve.operations import monitor
from reserve.schema.guards import NEW_GUARD
from tests import swapping
from tests.ops_support import with_aged_evidence
from tests.support import ROOT, Database, Venue, reserve_cli, slot

OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "reserve-alerts.yml"
RULE_TESTS = OPS / "prometheus" / "reserve-alerts.test.yml"
DASHBOARD = OPS / "grafana" / "reserve-capacity.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (Debian package prometheus; `make test` installs it). In CI this test runs.",
)


def run(db: Database, *args: str):
    return reserve_cli(db.url, "monitor", *args)


@pytest.fixture
def busy(head_db: Database) -> Database:
    """Evidence of two venues (some 40 days old), a replay (one cache hit) and allocations to probe."""
    with_aged_evidence(head_db, old=1, recent=2)
    with head_db.connect(autocommit=True) as conn:
        venue = Venue(conn, "C")
        booking = venue.booking(slot(200))
        hold = venue.hold([venue.tables[1]], slot(200), booking=booking)
        for _ in range(2):
            confirm_hold(conn, hold, booking, "replayed", restaurant_id=venue.id, env={})
    return head_db


def _overlap(db: Database) -> None:
    """Drop the guard and write two overlapping live allocations of one restaurant's table."""
    with db.connect() as conn:
        conn.execute(NEW_GUARD.drop_sql())
        venue = Venue(conn, "Overlapping")
        for _ in range(2):
            conn.execute('INSERT INTO allocations (restaurant_id, resource_type, resource_id, "window") '
                         "VALUES (%s, 'table', %s, tstzrange(%s, %s))", (venue.id, venue.tables[0], *slot(24)))


def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    """GET /metrics, parsed with prometheus_client's parser: {sample name: {sorted labels: value}}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _exposed_names(url: str) -> set[str]:
    """Every series name the exporter can expose (families without samples included, with their suffixes)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"histogram": ["_bucket", "_count", "_sum"], "counter": ["_total"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture
def exporter(busy: Database):
    running = monitor.start_exporter(busy.url, 0, min_interval=0, probe_runs=3)
    yield running
    running.stop()


# ---------------------------------------------------------------- --once


def test_once_prints_the_monitoring_table_and_is_go_on_a_healthy_head(busy: Database):
    result = run(busy, "--once", "--probe-runs", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["check", "status", "value"]
    assert re.search(r"^guard\s+OK\s+allocations_no_overlap present and valid$", result.output, re.M)
    assert re.search(r"^overlapping allocations\s+OK\s+0$", result.output, re.M)
    assert "7 rows, 5 in the last hour, oldest 40.0 days" in result.output
    assert "24 h: 16.7% (1 hits, 5 misses)" in result.output
    assert "over 5 runs" in result.output and lines[-1] == "verdict: GO"


def test_once_json_has_seven_days_of_counts(busy: Database):
    report = json.loads(run(busy, "--once", "--json", "--probe-runs", "3").output)
    checks = {c["name"]: c for c in report["checks"]}
    per_day = checks["confirmations per day"]["data"]["per_day"]
    assert len(per_day) == 7 and sum(per_day.values()) == 5  # the 40-day-old rows are outside the week
    assert checks["cache hit ratio"]["data"]["hits_7d"] == 1
    assert checks["overlap probe"]["data"]["runs"] == 3


def test_once_exits_1_naming_a_missing_guard_and_the_overlapping_pair(busy: Database):
    _overlap(busy)
    result = run(busy, "--once", "--probe-runs", "1")
    assert result.exit_code == 1
    assert re.search(r"^guard\s+FAIL\s+allocations_no_overlap missing$", result.output, re.M)
    assert re.search(r"^overlapping allocations\s+FAIL\s+1 pair\(s\)", result.output, re.M)
    assert "verdict: NO-GO" in result.output


@pytest.mark.parametrize("args", [[], ["--once", "--serve", "0"]])
def test_once_or_serve_exactly_one_is_required(head_db: Database, args: list[str]):
    result = run(head_db, *args)
    assert result.exit_code == 2 and "exactly one of --once or --serve PORT" in result.output


def test_once_on_an_unreachable_database_exits_2_without_the_password(head_db: Database):
    url = head_db.url.set(port=1, password="Monitor-Secret-7")
    result = CliRunner().invoke(main, ["monitor", "--once"], env={"DATABASE_URL": url.render_as_string(hide_password=False)})
    assert result.exit_code == 2 and "cannot connect" in result.output and "Monitor-Secret-7" not in result.output


# ---------------------------------------------------------------- the exporter


def test_metrics_scraped_over_http_parse_and_hold_the_readings(exporter):
    assert exporter.host == "127.0.0.1"
    metrics = _scrape(exporter.url)
    guard = (("guard", "allocations_no_overlap"),)
    assert metrics["reserve_database_up"][()] == 1
    assert metrics["reserve_overlapping_allocations"][()] == 0
    assert metrics["reserve_guard_present"][guard] == 1 and metrics["reserve_guard_valid"][guard] == 1
    assert metrics["reserve_confirmation_results_rows"][()] == 7
    assert metrics["reserve_confirmation_results_last_hour"][()] == 5
    assert 40 * 86400 <= metrics["reserve_confirmation_results_oldest_age_seconds"][()] < 41 * 86400
    assert metrics["reserve_confirm_cache_lookups"] == {(("outcome", "hit"),): 1, (("outcome", "miss"),): 5}
    assert metrics["reserve_confirm_cache_hit_ratio"][()] == pytest.approx(1 / 6)
    assert metrics["reserve_overlap_probe_duration_seconds_count"][()] == 3
    assert (("outcome", "hit"),) in metrics["reserve_confirm_duration_seconds_count"]


def test_the_open_window_is_exported_with_its_age_and_an_instant_rollback(exporter):
    metrics = _scrape(exporter.url)
    assert metrics["reserve_swap_window_open"][()] == 1  # head_db: upgraded online, its window open
    assert metrics["reserve_swap_rollback_instant"][()] == 1 and metrics["reserve_swap_conflicts"][()] == 0
    assert 0 <= metrics["reserve_swap_window_age_seconds"][()] < 86400


def test_a_conflict_makes_the_rollback_not_instant_and_a_closed_window_has_no_age(head_db: Database):
    a, b = swapping.two_venues(head_db)
    with head_db.connect() as conn:
        swapping.insert(conn, a.id, a.tables[0], slot(3))
        swapping.insert(conn, b.id, a.tables[0], slot(3))  # legal now, not under the previous table's guard
        conn.commit()
    with head_db.connect(autocommit=True) as conn:
        swapping.replay(conn)  # the replayer records it as a conflict
    running = monitor.start_exporter(head_db.url, 0, min_interval=0, probe_runs=1)
    try:
        metrics = _scrape(running.url)
        assert metrics["reserve_swap_rollback_instant"][()] == 0 and metrics["reserve_swap_conflicts"][()] == 1
        assert "not instant (1 conflict(s)" in run(head_db, "--once", "--probe-runs", "1").output
        head_db.close_window()
        metrics = _scrape(running.url)
    finally:
        running.stop()
    assert metrics["reserve_swap_window_open"][()] == 0 and metrics["reserve_swap_rollback_instant"][()] == 0
    assert "reserve_swap_window_age_seconds" not in metrics


def test_readings_are_reused_within_min_interval(busy: Database):
    running = monitor.start_exporter(busy.url, 0, min_interval=3600, probe_runs=2)
    try:
        first = _scrape(running.url)["reserve_overlap_probe_duration_seconds_count"][()]
        second = _scrape(running.url)["reserve_overlap_probe_duration_seconds_count"][()]
    finally:
        running.stop()
    assert first == second == 2


def test_exporter_reports_a_missing_guard_and_scans_for_overlaps(busy: Database, exporter):
    _overlap(busy)
    metrics = _scrape(exporter.url)
    assert metrics["reserve_guard_present"][(("guard", "allocations_no_overlap"),)] == 0
    assert metrics["reserve_guard_valid"][(("guard", "allocations_no_overlap"),)] == 0
    assert metrics["reserve_overlapping_allocations"][()] == 1


def test_exporter_serves_database_up_0_when_the_database_is_unreachable(head_db: Database):
    running = monitor.start_exporter(head_db.url.set(port=1), 0, min_interval=0)
    try:
        metrics = _scrape(running.url)
    finally:
        running.stop()
    assert metrics["reserve_database_up"][()] == 0
    assert "reserve_guard_valid" not in metrics  # unknown, not "0": OverlapGuardMissing fires on absent() too


def test_a_port_in_use_is_refused_by_the_library_and_the_cli_with_exit_2(head_db: Database):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(monitor.PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            monitor.start_exporter(head_db.url, port)
        result = run(head_db, "--serve", str(port))
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.output


def test_serve_runs_until_sigterm_and_exits_0(head_db: Database):
    reserve = Path(sys.executable).parent / "reserve"
    env = {**os.environ, "DATABASE_URL": head_db.url.render_as_string(hide_password=False)}
    process = subprocess.Popen([str(reserve), "monitor", "--serve", "0", "--min-interval", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving metrics on http://127.0.0.1:" in line, process.stderr.read() if process.poll() is not None else line
        assert head_db.url.password not in line
        url = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line).group(1)
        assert _scrape(url)["reserve_guard_valid"][(("guard", "allocations_no_overlap"),)] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_on_an_unreachable_database_exits_2_before_listening(head_db: Database):
    url = head_db.url.set(port=1, password="Serve-Secret-3")
    result = CliRunner().invoke(main, ["monitor", "--serve", "0"],
                                env={"DATABASE_URL": url.render_as_string(hide_password=False)})
    assert result.exit_code == 2 and "cannot connect" in result.output and "Serve-Secret-3" not in result.output


# ---------------------------------------------------------------- ops/: alert rules and dashboard


@needs_promtool
def test_promtool_checks_the_alert_rules():
    assert PROMTOOL, "promtool is required in CI: install the Debian package prometheus (make test does)"
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_fire_each_alert_when_it_should_and_only_then():
    assert PROMTOOL, "promtool is required in CI: install the Debian package prometheus (make test does)"
    result = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _referenced(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\breserve_[a-z0-9_]+", expr)}


def test_alert_rules_cover_the_required_alerts_and_reference_only_exposed_metrics(exporter):
    text = RULES.read_text()
    for alert in ("AllocationsOverlap", "OverlapGuardMissing", "ConfirmErrorRateHigh", "OverlapProbeSlow",
                  "SwapWindowOpenTooLong", "SwapRollbackNotInstant", "SwapReplayBehind"):
        assert f"alert: {alert}" in text
    exprs = re.findall(r"expr: (.*(?:\n {10,}.*)*)", text)
    assert len(exprs) == 9
    assert _referenced(exprs) - _exposed_names(exporter.url) == set()


def test_dashboard_references_only_metrics_the_exporter_exposes_and_shows_each_reading(exporter):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert all(panel["targets"] for panel in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    referenced = _referenced(exprs)
    assert referenced - _exposed_names(exporter.url) == set()
    families = {"reserve_overlapping_allocations", "reserve_guard_valid", "reserve_confirmation_results_rows",
                "reserve_confirmation_results_last_hour", "reserve_confirmation_results_oldest_age_seconds",
                "reserve_confirm_cache_hit_ratio", "reserve_overlap_probe_duration_seconds_bucket",
                "reserve_confirm_duration_seconds_bucket", "reserve_confirm_errors_total"}
    assert families <= referenced


def test_every_alert_has_a_runbook_section_in_the_operations_guide():
    guide = (ROOT / "docs" / "OPERATIONS.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", guide, re.M)}
    runbooks = re.findall(r"runbook: docs/OPERATIONS\.md#(\S+)", RULES.read_text())
    assert len(runbooks) == 9
    assert set(runbooks) - anchors == set()
