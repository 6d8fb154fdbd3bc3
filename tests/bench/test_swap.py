"""bench.swap: the real migration, run with the guard under test passed explicitly."""

from __future__ import annotations

from bench import data, swap
from bench.options import Options
from reserve.rollout import alembic_runner, dataset
from reserve.schema import guards
from tests.support import Database

SHIPPED_KEY = guards.NEW_GUARD.key
GUARD_DEFINITION = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s"


def test_a_proposed_key_order_is_what_the_real_upgrade_builds_during_the_run(baseline_db: Database):
    proposed = ("resource_id", "window", "restaurant_id", "resource_type")
    shipped = guards.NEW_GUARD
    guard = Options(proposed_key=proposed).new_guard
    alembic_runner.upgrade(baseline_db.url, data.FROM_REVISION)
    with baseline_db.connect(autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=2, tables_per_restaurant=5, windows_per_table=10))
    # The predictor samples by the proposed guard's leading uuid column, not the shipped one's.
    assert "whole resource_id groups" in swap.predict(baseline_db.url, "upgrade", guard)["method"]
    swap.upgrade_head(baseline_db.url, guard)  # (at 100 rows the hold is too short for the lock watcher to see)
    assert guards.NEW_GUARD is shipped and shipped.key == SHIPPED_KEY  # nothing global was replaced
    with baseline_db.connect() as conn:
        definition = conn.execute(GUARD_DEFINITION, (shipped.name,)).fetchone()[0]
    assert 'resource_id WITH =, "window" WITH &&, restaurant_id WITH =, resource_type WITH =' in definition
    swap.downgrade_one(baseline_db.url, guard)
    with baseline_db.connect() as conn:
        assert conn.execute(GUARD_DEFINITION, (shipped.name,)).fetchone() is None
        assert conn.execute(GUARD_DEFINITION, (guards.OLD_GUARD.name,)).fetchone() is not None
