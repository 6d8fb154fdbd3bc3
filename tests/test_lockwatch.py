"""reserve.lockwatch: the one instrument that measures the ACCESS EXCLUSIVE hold on allocations."""

from __future__ import annotations

import time

from reserve.lockwatch import LockWatch
from tests.support import Database


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
