"""bench.builds and bench.options: what the benchmark builds, and which key order it measures as shipped."""

from __future__ import annotations

import pytest

from bench import builds, swap
from bench.options import Options
from reserve.schema import guards

REORDERED = ("resource_id", "window", "restaurant_id", "resource_type")
SHIPPED = guards.NEW_GUARD.key


def test_the_shipped_floor_builds_exactly_the_shipped_guard():
    assert builds.constraint_sql(guards.NEW_GUARD.name, Options().shipped_key) == guards.NEW_GUARD.add_sql()


def test_the_benchmark_measures_the_key_order_that_ships_unless_another_is_proposed():
    assert Options().new_guard is guards.NEW_GUARD
    assert Options().shipped_key == guards.NEW_GUARD.key
    proposed = Options(proposed_key=REORDERED)
    assert proposed.shipped_key == REORDERED
    assert proposed.new_guard == guards.Guard(guards.NEW_GUARD.name, REORDERED, guards.NEW_GUARD.timing)
    build = builds.constraint_build("shipped", proposed.shipped_key)
    assert 'resource_id WITH =, "window" WITH &&, restaurant_id WITH =, resource_type WITH =' in build.statements[0]
    # The key handed to the floors is the one the results document names as shipped.
    sample = {"wall_s": 1.0, "lock_s": 1.0, "cpu_s": 1.0, "holds": 1}
    series = {"upgrade": [sample], "downgrade": [sample],
              "floors": [{k: sample for k in ("floor_new", "floor_old", "seed_order", "index_only")}]}
    assert swap.summarize_swap(series, 10, proposed.shipped_key)["shipped_key"] == builds.key_label(REORDERED)
    assert swap.summarize_swap(series, 10, Options().shipped_key)["shipped_key"] == builds.key_label(guards.NEW_GUARD.key)
    assert guards.NEW_GUARD.key == SHIPPED  # proposing a key order replaced nothing global


def test_a_key_order_must_use_exactly_the_guards_columns():
    with pytest.raises(ValueError):
        builds.proposed_guard(("restaurant_id", "window"))
    with pytest.raises(ValueError):
        Options(proposed_key=("restaurant_id", "window", "resource_id", "resource_id"))
