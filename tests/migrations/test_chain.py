"""The revision chain as a whole: one head, a clean round trip, offline SQL equal to online."""

from __future__ import annotations

import os
import subprocess

from reserve import db
from reserve.rollout import alembic_runner
from reserve.schema import revisions
from tests.support import REVISIONS, Database

# The revisions the contract names, in its order; later ones may sit between them, never around them.
CONTRACT_ORDER = ["0001_baseline", "0002_confirmation_results", "0003_confirm_v12", "0003a_operations",
              "0003b_tenant_policies", "0004_allocations_no_overlap"]


def test_chain_is_linear_from_the_baseline_to_the_swap_in_the_contracts_order():
    scripts = revisions.scripts()
    chain = [rev.revision for rev in scripts.walk_revisions("base", "heads")][::-1]
    assert scripts.get_heads() == [chain[-1]] and chain[0] == "0001_baseline"
    assert chain[-1] == "0004_allocations_no_overlap"  # the swap is last, so downgrade -1 is its rollback
    for below, above in zip(chain, chain[1:], strict=False):
        assert scripts.get_revision(above).down_revision == below, above
    assert [rev for rev in chain if rev in CONTRACT_ORDER] == CONTRACT_ORDER


def test_upgrade_head_then_downgrade_base_leaves_the_catalog_as_it_was(empty_db: Database):
    before = empty_db.snapshot()
    empty_db.upgrade("head")
    assert empty_db.current() == REVISIONS[-1]
    assert empty_db.snapshot() != before
    empty_db.downgrade("base")
    assert empty_db.current() is None
    assert empty_db.snapshot() == before


def test_offline_sql_applies_with_psql_and_gives_the_online_catalog(empty_db: Database, head_db: Database):
    script = alembic_runner.offline_sql("upgrade", "head")
    assert "0004_allocations_no_overlap in this script is the LOCKED swap" in script.split("SET lock_timeout")[0]
    url = empty_db.url
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", "-"],
        input=script, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, db.scrub(result.stderr, url)
    assert empty_db.current() == REVISIONS[-1]
    assert "an offline script uses the locked method" in script  # said in the script, at the swap
    head_db.close_window()  # the online upgrade's catalog once its window is closed: the same as the locked one's
    assert empty_db.snapshot() == head_db.snapshot()
