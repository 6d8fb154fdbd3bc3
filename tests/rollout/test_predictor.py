"""reserve.rollout.predictor: the swap's hold predicted from a sample build, taking nothing but ACCESS SHARE."""

from __future__ import annotations

import json
import re

import pytest

from reserve.rollout import dataset, predictor
from reserve.schema import guards
from tests.support import ROOT, Database

SMALL = dataset.Shape(restaurants=3, tables_per_restaurant=10, windows_per_table=20)  # 600 live rows


def _load(db: Database) -> int:
    with db.connect(autocommit=True) as conn:
        return dataset.generate(conn, SMALL)["allocations"]


def test_upgrade_builds_the_new_guard_on_a_sample_and_scales_it(head_db: Database):
    rows = _load(head_db)
    with head_db.connect(autocommit=True) as conn:
        prediction = predictor.predict_swap_hold(conn, "upgrade", sample_rows=200)
    assert prediction.rows == rows
    assert prediction.live_rows == SMALL.live_allocations
    # Whole restaurants are sampled: a multiple of one restaurant's live rows, fewer than all.
    assert 0 < prediction.sample_live_rows < prediction.live_rows
    assert prediction.sample_live_rows % (SMALL.tables_per_restaurant * SMALL.windows_per_table) == 0
    assert prediction.seconds > prediction.sample_build_s > 0
    assert guards.NEW_GUARD.name in prediction.method and "restaurant_id" in prediction.method
    assert f"rows^{predictor.GROWTH[guards.NEW_GUARD.name]:g} " in prediction.method  # the new guard's own growth


def test_downgrade_builds_the_old_guard_sampled_by_resource(baseline_db: Database):
    _load(baseline_db)
    with baseline_db.connect(autocommit=True) as conn:
        prediction = predictor.predict_swap_hold(conn, "downgrade", sample_rows=100)
    assert guards.OLD_GUARD.name in prediction.method and "resource_id" in prediction.method
    assert f"rows^{predictor.GROWTH[guards.OLD_GUARD.name]:g} " in prediction.method  # the old guard's own growth
    assert prediction.sample_live_rows % SMALL.windows_per_table == 0
    assert prediction.seconds > 0


def test_a_table_smaller_than_the_sample_is_built_whole(head_db: Database):
    _load(head_db)
    with head_db.connect(autocommit=True) as conn:
        prediction = predictor.predict_swap_hold(conn, "upgrade", calibration=1.0)
    assert prediction.sample_live_rows == prediction.live_rows
    assert prediction.seconds == pytest.approx(prediction.sample_build_s)


def test_empty_table_predicts_no_hold(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        prediction = predictor.predict_swap_hold(conn, "upgrade")
    assert prediction.seconds == 0 and prediction.rows == 0


def test_runs_while_another_transaction_holds_exclusive_on_allocations(head_db: Database):
    """EXCLUSIVE conflicts with every lock mode but ACCESS SHARE: the prediction must not wait for it."""
    _load(head_db)
    with head_db.connect() as holder, head_db.connect(autocommit=True) as conn:
        holder.execute("LOCK TABLE public.allocations IN EXCLUSIVE MODE")
        conn.execute("SET lock_timeout = '1s'")
        prediction = predictor.predict_swap_hold(conn, "upgrade", sample_rows=200)
        holder.rollback()
    assert prediction.seconds > 0


def test_leaves_nothing_behind_in_or_out_of_a_transaction(head_db: Database):
    _load(head_db)
    with head_db.connect() as conn:  # inside the caller's transaction: a savepoint, rolled back
        predictor.predict_swap_hold(conn, "upgrade", sample_rows=200)
        assert conn.execute("SELECT to_regclass('pg_temp.reserve_predict_sample')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0] > 0  # still usable
        conn.rollback()
    with head_db.connect(autocommit=True) as conn:
        predictor.predict_swap_hold(conn, "downgrade", sample_rows=200)
        assert conn.execute("SELECT to_regclass('pg_temp.reserve_predict_sample')").fetchone()[0] is None
        assert conn.info.transaction_status.name == "IDLE"


def test_rejects_an_unknown_direction(head_db: Database):
    with head_db.connect(autocommit=True) as conn, pytest.raises(ValueError):
        predictor.predict_swap_hold(conn, "sideways")


def _recorded(result: dict, direction: str) -> tuple[float, int, int, float]:
    """(sample build s, sample live rows, live rows, measured hold s) of one direction of a make bench run."""
    entry = result["predictor"] if direction == "upgrade" else result["predictor"]["downgrade"]
    sample, live = (int(n.replace(",", "")) for n in re.search(r"\(([\d,]+) of ([\d,]+) live rows",
                                                               result["predictor"]["method"]).groups())
    return entry["sample_build_s"], sample, live, entry["actual_s"]


@pytest.mark.parametrize(("direction", "guard"), [("upgrade", guards.NEW_GUARD), ("downgrade", guards.OLD_GUARD)])
def test_the_shipped_growth_carries_the_recorded_sample_build_to_the_measured_hold(direction: str, guard: guards.Guard):
    """GROWTH and CALIBRATION are fitted by make bench: against the run it records (bench/results/latest.json), the
    prediction they give from that run's sample build must land within 25% of the hold it measured."""
    result = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    build_s, sample, live, measured = _recorded(result, direction)
    predicted = build_s * predictor.scale_factor(live, sample, predictor.GROWTH[guard.name]) * predictor.CALIBRATION
    assert abs(predicted - measured) / measured <= 0.25, (direction, predicted, measured)
