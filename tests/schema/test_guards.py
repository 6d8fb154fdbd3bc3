"""reserve.schema.guards: the overlap finder agrees with the obvious quadratic definition."""

from __future__ import annotations

import random

import pytest

from reserve.schema import guards
from tests.support import Database, Venue, slot

BRUTE_FORCE = """
SELECT a.id, b.id FROM allocations a JOIN allocations b
  ON {same} AND a."window" && b."window" AND a.id < b.id
WHERE NOT a.shadow AND NOT b.shadow ORDER BY 1, 2
"""


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("guard", [guards.OLD_GUARD, guards.NEW_GUARD], ids=["old", "new"])
def test_find_violations_matches_the_brute_force_self_join(baseline_db: Database, guard: guards.Guard, seed: int):
    rng = random.Random(seed)
    with baseline_db.connect() as conn:
        conn.execute(f"ALTER TABLE allocations DROP CONSTRAINT {guards.OLD_GUARD.name}")
        venues = [Venue(conn, "A", tables=3), Venue(conn, "B", tables=0)]
        resources = venues[0].tables
        for _ in range(40):
            start, _ = slot(rng.randint(0, 30))
            conn.execute(
                "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\", shadow) "
                "VALUES (%s, %s, %s, tstzrange(%s, %s + make_interval(hours => %s)), %s)",
                (rng.choice(venues).id, rng.choice(["table", "merge_group"]), rng.choice(resources),
                 start, start, rng.randint(1, 4), rng.random() < 0.2),
            )
        same = " AND ".join(f"a.{c} = b.{c}" for c in guard.equal_columns)
        expected = [(str(a), str(b)) for a, b in conn.execute(BRUTE_FORCE.format(same=same))]
        assert guards.find_violations(conn, guard, limit=10_000) == expected
        assert expected, "the random data should contain overlaps"
        first_three = guards.find_violations(conn, guard, limit=3)
        assert len(first_three) == min(3, len(expected)) and set(first_three) <= set(expected)


def test_guard_definitions_match_what_postgresql_prints(head_db: Database, baseline_db: Database):
    with head_db.connect() as conn:
        assert guards.is_in_place(conn, guards.NEW_GUARD)
        assert not guards.is_in_place(conn, guards.OLD_GUARD)
    with baseline_db.connect() as conn:
        assert guards.is_in_place(conn, guards.OLD_GUARD)
