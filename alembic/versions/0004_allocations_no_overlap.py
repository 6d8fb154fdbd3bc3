"""The guard swap: allocations_resource_window_excl -> allocations_no_overlap.

Revision ID: 0004_allocations_no_overlap
Revises: 0003c_maintenance_role

Upgrade: replace the global, commit-time guard with one scoped by tenant and
checked inside the statement (DEFERRABLE INITIALLY IMMEDIATE), and drop the
redundant index allocations_resource_window_idx.
Checked first: nothing, when the catalog shows the old guard in place (it
implies the new one); otherwise the table is scanned, before any lock, and
the upgrade stops listing the offending allocation ids.
Downgrade (the emergency rollback): first refuse, listing the ids, if any rows
break the old guard (the same resource in two restaurants at once); then swap
the guards back under the lock and commit: from here bad bookings are stopped.
Only then build the redundant index, concurrently: that build waits for every
older transaction of the database (a report, a REPEATABLE READ transaction,
pg_dump) but blocks no read or write, so it waits as long as -x
index_build_wait (1h) allows. Interrupted there, the database keeps the old
guard, `reserve verify` names the pending index, and a rerun of
`alembic downgrade -1` goes straight to the index.
Lock: ACCESS EXCLUSIVE on allocations for the swap only, taken with a short
lock_timeout and bounded retries (-x swap_lock_timeout=2s,
swap_lock_attempts=5, swap_lock_pause=3); held while PostgreSQL builds and
checks the new guard's index (21 s up, 39 s down at 1M rows, make bench; `reserve preflight`
predicts it for the live table). Nothing else runs under it.
"""

from __future__ import annotations

from alembic import op

from reserve.schema import migration
from reserve.schema.guards import OLD_GUARD, REDUNDANT_INDEX, redundant_index_sql

revision = "0004_allocations_no_overlap"
down_revision = "0003c_maintenance_role"


def upgrade() -> None:
    new_guard = migration.new_guard()
    if not migration.guard_in_place(OLD_GUARD):
        migration.refuse_violations(new_guard, "add allocations_no_overlap")
    migration.take_locks(revision, "upgrade")
    op.execute(OLD_GUARD.drop_sql())
    op.execute(f"DROP INDEX public.{REDUNDANT_INDEX}")
    migration.add_guard(new_guard, "add allocations_no_overlap")


def downgrade() -> None:
    if not migration.guard_in_place(OLD_GUARD):  # else an earlier run restored it: straight to the index
        migration.refuse_violations(OLD_GUARD, "restore allocations_resource_window_excl")
        migration.take_locks(revision, "downgrade")
        op.execute(migration.new_guard().drop_sql())
        migration.add_guard(OLD_GUARD, "restore allocations_resource_window_excl")
    migration.build_index_after_commit(REDUNDANT_INDEX, lambda name: redundant_index_sql(name, concurrently=True),
                                       step=f"downgrade {revision}", done=f"{OLD_GUARD.name} is restored")
