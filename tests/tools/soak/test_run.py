"""The live-traffic soak (tools.soak.run), reduced: the swap, its rollback and the swap again while two
workers confirm holds, then the invariants.
"""

from __future__ import annotations

import json

import pytest

from reserve.rollout.evidence import Step
from tests.support import REVISIONS, Database
from tools.soak import run, workers
from tools.soak.checks import Invariants

pytestmark = pytest.mark.slow  # `make test-slow`: the soak, reduced: worker processes through three migrations

EXPECTED_PHASES = [
    "before", "during upgrade head", "after upgrade head", "during downgrade -1", "after downgrade -1",
    "during upgrade head again", "after upgrade head again",
]
EXPECTED_SQLSTATES = {"23P01", "P0001", *workers.RETRYABLE}


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "REPEATABLE READ, FORCE RLS, deploy role"])
def test_confirmations_flow_through_swap_rollback_and_swap_with_every_invariant_kept(empty_db: Database,
                                                                                     hostile: bool):
    run.prepare(empty_db.url, rows=3_000)
    migrate_url = run.harden(empty_db.url) if hostile else None
    result = run.run_soak(empty_db.url, workers=2, phase_seconds=2.0, overlap_every=5, migrate_url=migrate_url,
                          alembic_x=["swap_lock_timeout=2s", "swap_lock_attempts=5"])
    report = result.render()

    assert [s.name for s in result.steps] == [name for name, _ in run.CHAIN], report
    assert all(isinstance(s, Step) and s.ok for s in result.steps), report
    assert all(s.lock_hold_s is not None and s.lock_retries is not None for s in result.steps), report
    assert [p.name for p in result.phases] == EXPECTED_PHASES, report
    assert all(p.confirmations > 0 and p.confirmations_per_s > 0 for p in result.phases), report
    # The deliberate overlaps were rejected under both guards: at commit by the old one (23P01 on its
    # constraint), inside the call by the new one (P0001 allocations_no_overlap).
    assert result.rejected_overlaps > 0, report
    assert {"23P01", "P0001"} <= set(result.errors_by_sqlstate), report
    assert set(result.errors_by_sqlstate) <= EXPECTED_SQLSTATES, report
    assert result.unexpected_errors == [], report
    assert result.invariants == Invariants(0, 0, 0, 0, 0, 0), report
    assert result.final_revision == REVISIONS[-1] and result.catalog_drift == [], report
    assert result.problems == [] and result.ok, report
    # The phases tile the run: every confirmation falls in one, except the call each worker had in flight at stop.
    assert 0 <= result.confirmations - sum(p.confirmations for p in result.phases) <= result.workers
    assert 0 < result.longest_stall_s < 30, report

    if hostile:  # the settings held to the end, and the swap ran as the deploy role
        with empty_db.connect() as conn:
            assert conn.execute("SELECT relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class "
                                "WHERE oid = 'public.allocations'::regclass").fetchone() == (True, run.DEPLOYER)
    document = json.loads(result.to_json())
    assert document["ok"] is True and len(document["phases"]) == len(EXPECTED_PHASES)
