"""reserve.rollout.scratch: one scratch database per run, never the same name twice, always dropped."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from reserve import db
from reserve.rollout import scratch
from tests.support import maintenance_url


def test_names_made_in_the_same_second_differ():
    names = {scratch.unique_name("reserve_rehearsal") for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith("reserve_rehearsal_") for name in names)


def test_two_scratch_databases_at_once_are_two_databases_and_both_are_dropped(pg_server):
    server = maintenance_url(pg_server)
    with scratch.scratch_database(server, "reserve_test") as first, scratch.scratch_database(server, "reserve_test") as second:
        assert first.database != second.database
        with db.connect(first, autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == first.database
    with db.connect(server, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)",
                            (first.database, second.database)).fetchone()[0]
    assert left == 0


def test_a_remote_server_is_refused_when_only_a_local_one_may_be_used():
    with pytest.raises(scratch.ScratchDatabaseError, match="only a server on this machine"):
        with scratch.scratch_database(make_url("postgresql+psycopg://u@db.internal/postgres"), "x", local_only=True):
            pass
