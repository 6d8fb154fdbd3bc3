"""reserve.rollout.lockwatch: the one instrument that measures the ACCESS EXCLUSIVE hold on allocations."""

from __future__ import annotations

import time

from reserve.rollout.lockwatch import LockWatch
from tests.support import Database, cloned


def test_an_access_exclusive_hold_is_seen_with_its_holder_and_duration(head_db: Database):
    with head_db.connect() as holder:
        pid = holder.info.backend_pid
        with LockWatch(head_db.url) as watch:
            holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
            time.sleep(0.1)
            holder.commit()
            time.sleep(0.05)
    assert len(watch.holds) == 1
    assert watch.holds[0].pid == pid
    assert 0.05 < watch.longest_s == watch.total_s < 5


def test_weaker_locks_are_not_holds(head_db: Database):
    with head_db.connect() as holder, LockWatch(head_db.url) as watch:
        holder.execute("LOCK TABLE public.allocations IN EXCLUSIVE MODE")
        time.sleep(0.05)
        holder.commit()
    assert watch.holds == []


def test_a_hold_in_a_template_twin_database_is_not_seen(pg_server, head_db: Database):
    """pg_locks is cluster-wide, and a database made from a template shares its relation OIDs."""
    with cloned(pg_server, head_db.name, f"{head_db.name}_twin") as twin, \
            twin.connect() as holder, LockWatch(head_db.url) as watch:
        holder.execute("LOCK TABLE public.allocations IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.1)
        holder.commit()
    assert watch.holds == []
