"""reserve adopt, verify, snapshot and diff."""

from __future__ import annotations

import os
import subprocess

from alembic import command

from reserve.report import FAIL
from reserve.rollout import dataset, snapshots
from reserve.rollout.adopt import adopt
from reserve.rollout.ephemeral import find_bindir
from reserve.rollout.verify import verify
from reserve.schema import revisions
from tests.support import REVISIONS, Database, Venue, confirm


def _unstamped_baseline(db: Database) -> None:
    db.upgrade("0001_baseline")
    with db.connect() as conn:
        conn.execute("DROP TABLE alembic_version")


def test_adopt_stamps_a_database_that_matches_the_baseline(empty_db: Database):
    _unstamped_baseline(empty_db)
    report = adopt(empty_db.url)
    assert report.exit_code == 0, report.to_text()
    assert empty_db.current() == "0001_baseline"
    empty_db.upgrade("head")


def test_adopt_refuses_a_drifted_schema_with_the_differences_and_does_not_stamp(empty_db: Database):
    _unstamped_baseline(empty_db)
    with empty_db.connect() as conn:
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_resource_window_excl")
    report = adopt(empty_db.url)
    assert report.exit_code == 1
    assert "allocations_resource_window_excl" in report.to_text()
    assert empty_db.current() is None


def test_verify_at_head_is_clean_and_the_probe_uses_the_gist_index(head_db: Database):
    with head_db.connect() as conn:
        dataset.generate(conn, dataset.Shape(restaurants=20, windows_per_table=10))
    report = verify(head_db.url)
    assert report.exit_code == 0, report.to_text()
    assert "allocations_no_overlap" in next(c for c in report.checks if c.name == "probe plan").detail


def test_verify_names_a_hand_dropped_constraint(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("ALTER TABLE allocations DROP CONSTRAINT allocations_no_overlap")
    report = verify(head_db.url)
    assert report.exit_code == 1
    assert [c.name for c in report.checks if c.status == FAIL] == ["catalog", "guard"]
    assert "allocations_no_overlap" in report.to_text()


def test_snapshot_holds_revision_and_counts_and_diff_shows_the_swap(head_db: Database):
    with head_db.connect() as conn:
        venue = Venue(conn, "Private Name Ltd")
        confirm(conn, venue.hold([venue.tables[0]]), venue.booking())
        conn.commit()
        after = snapshots.capture(conn)
    command.downgrade(revisions.config(head_db.url), "-1")
    with head_db.connect() as conn:
        before = snapshots.capture(conn)
    assert "[revision]\n0004_allocations_no_overlap" in after
    assert "allocations 1" in after and "Private Name Ltd" not in after
    text = snapshots.diff(before, after)
    assert "+public.allocations allocations_no_overlap: EXCLUDE" in text
    assert f"-{REVISIONS[-2]}" in text and f"+{REVISIONS[-1]}" in text
    assert snapshots.diff(after, after) == ""


def test_a_window_restored_with_pg_dump_and_pg_restore_is_still_named_by_verify(head_db: Database, empty_db: Database):
    # pg_restore brings the machinery's schema back with a NULL ACL (the default it was revoked down to): the
    # same schema, and the same open window.
    auth = ["-h", head_db.url.host or "", "-p", str(head_db.url.port), "-U", head_db.url.username or ""]
    env = {**os.environ, "PGPASSWORD": head_db.url.password or ""}
    dump = subprocess.run([str(find_bindir() / "pg_dump"), "-Fc", *auth, "-d", head_db.name], env=env,
                          capture_output=True, check=True).stdout
    subprocess.run([str(find_bindir() / "pg_restore"), "--no-owner", *auth, "-d", empty_db.name], input=dump, env=env,
                   capture_output=True, check=True)
    restored = verify(empty_db.url)
    window = [check for check in restored.checks if check.name == "swap window"]
    assert restored.exit_code == 0 and len(window) == 1 and "open since" in window[0].detail, restored.to_text()
