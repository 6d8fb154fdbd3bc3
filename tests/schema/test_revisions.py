"""reserve.schema.revisions: the chain as Alembic walks it, and which step a failed run stopped in."""

from __future__ import annotations

from reserve.schema import revisions

CHAIN = revisions.chain()


def test_a_failed_upgrade_stopped_in_the_first_step_alembic_version_does_not_reflect():
    start, target = CHAIN[0], CHAIN[-1]
    assert revisions.failing_step(start, target, CHAIN[0]) == (CHAIN[1], "upgrade")
    assert revisions.failing_step(start, target, CHAIN[-2]) == (CHAIN[-1], "upgrade")
    assert revisions.failing_step(start, target, CHAIN[-1]) == (None, "upgrade")  # it did not stop in a step


def test_a_failed_downgrade_stopped_in_the_revision_alembic_version_still_names():
    assert revisions.failing_step(CHAIN[-1], CHAIN[-2], CHAIN[-1]) == (CHAIN[-1], "downgrade")
    assert revisions.failing_step(CHAIN[-1], None, CHAIN[2]) == (CHAIN[2], "downgrade")
    assert revisions.failing_step(CHAIN[-1], None, None) == (None, "downgrade")


def test_a_database_moved_elsewhere_meanwhile_names_no_step():
    assert revisions.failing_step(CHAIN[2], CHAIN[-1], CHAIN[0]) == (None, "upgrade")
