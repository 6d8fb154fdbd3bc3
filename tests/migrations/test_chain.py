"""The revision chain as a whole: one head, a clean round trip, offline SQL equal to online."""

from __future__ import annotations

import os
import subprocess

from reserve import db
from tests.support import REVISIONS, Database, offline_sql, script_directory


def test_chain_is_linear_with_a_single_head_in_spec_order():
    scripts = script_directory()
    assert scripts.get_heads() == [REVISIONS[-1]]
    walked = [rev.revision for rev in scripts.walk_revisions("base", "heads")]
    assert list(reversed(walked)) == REVISIONS


def test_upgrade_head_then_downgrade_base_leaves_the_catalog_as_it_was(empty_db: Database):
    before = empty_db.snapshot()
    empty_db.upgrade("head")
    assert empty_db.current() == REVISIONS[-1]
    assert empty_db.snapshot() != before
    empty_db.downgrade("base")
    assert empty_db.current() is None
    assert empty_db.snapshot() == before


def test_offline_sql_applies_with_psql_and_gives_the_online_catalog(empty_db: Database, head_db: Database):
    script = offline_sql("head")
    url = empty_db.url
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", "-"],
        input=script, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, db.scrub(result.stderr, url)
    assert empty_db.current() == REVISIONS[-1]
    assert empty_db.snapshot() == head_db.snapshot()
