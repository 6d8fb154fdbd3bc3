"""The reserve command: thin shells with documented exit codes, and no password ever printed."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reserve import __version__
from reserve.cli import main
from tests.support import Database, reserve_cli


def run(url, *args: str):
    return reserve_cli(url, *args)


def test_help_and_version():
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_missing_database_url_is_a_usage_error():
    result = CliRunner().invoke(main, ["verify"], env={"DATABASE_URL": ""})
    assert result.exit_code == 2 and "DATABASE_URL" in result.output


def test_unreachable_host_exits_2_without_the_password(baseline_db: Database):
    url = baseline_db.url.set(host="127.0.0.1", port=1, password="Unreachable-Secret-91")
    for command in (["preflight"], ["verify"], ["adopt"], ["snapshot"]):
        result = run(url, *command)
        assert result.exit_code == 2, (command, result.output)
        assert "cannot connect" in result.output
        assert "Unreachable-Secret-91" not in result.output


def test_wrong_password_exits_2_without_echoing_it(baseline_db: Database):
    url = baseline_db.url.set(password="Wrong-Password-Zz7")
    result = run(url, "preflight")
    assert result.exit_code == 2
    assert "Wrong-Password-Zz7" not in result.output
    assert "password authentication failed" in result.output


def test_unknown_revision_exits_2(baseline_db: Database):
    result = run(baseline_db.url, "preflight", "--target", "9999_nope")
    assert result.exit_code == 2 and "unknown revision" in result.output


def test_preflight_json_is_machine_readable_and_go_on_a_fresh_baseline(baseline_db: Database):
    import json

    result = run(baseline_db.url, "preflight", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["verdict"] == "go" and report["facts"]["current_revision"] == "0001_baseline"


def test_preflight_on_a_drifted_database_exits_1_naming_the_drift(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_no_overlap")
    result = run(head_db.url, "preflight", "--target", "0003_confirm_v12")
    assert result.exit_code == 1
    assert "allocations_no_overlap" in result.output and "NO-GO" in result.output


def test_snapshot_to_file_and_diff(head_db: Database, tmp_path: Path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    assert run(head_db.url, "snapshot", "-o", str(first)).exit_code == 0
    with head_db.connect() as conn:
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_no_overlap")
    assert run(head_db.url, "snapshot", "-o", str(second)).exit_code == 0
    same = CliRunner().invoke(main, ["diff", str(first), str(first)])
    assert same.exit_code == 0 and "identical" in same.output
    changed = CliRunner().invoke(main, ["diff", str(first), str(second)])
    assert changed.exit_code == 1 and "-public.allocations allocations_no_overlap" in changed.output


def test_snapshot_to_an_unwritable_place_exits_2(head_db: Database, tmp_path: Path):
    """A path through a regular file cannot be written by anyone, root included (CI runs as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run(head_db.url, "snapshot", "-o", str(blocker / "s.txt"))
    assert result.exit_code == 2 and "cannot write" in result.output and "Not a directory" in result.output


def test_snapshot_into_a_missing_directory_exits_2(head_db: Database, tmp_path: Path):
    result = run(head_db.url, "snapshot", "-o", str(tmp_path / "no" / "such" / "dir" / "s.txt"))
    assert result.exit_code == 2 and "cannot write" in result.output


def test_adopt_on_an_adopted_database_exits_1(baseline_db: Database):
    result = run(baseline_db.url, "adopt")
    assert result.exit_code == 1 and "already adopted" in result.output
