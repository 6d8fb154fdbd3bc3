"""The guard swap: allocations_resource_window_excl -> allocations_no_overlap.

Revision ID: 0004_allocations_no_overlap
Revises: 0003c_maintenance_role

Upgrade: replace the global, commit-time guard with one scoped by tenant and
checked inside the statement (DEFERRABLE INITIALLY IMMEDIATE), and drop the
redundant index allocations_resource_window_idx.
Downgrade (the emergency rollback): the old guard and its index, exactly.
Checked first: the data against the guard being installed: proved by the
catalog when the old guard is in place, else a scan; the offending ids stop
the step before anything changes.

Online (the default; reserve.schema.swap): a shadow copy of
allocations filled in bulk, every write meanwhile appended to a change log and
replayed into it, the target guard built on it once filled, then exchanged
with the live table under ACCESS EXCLUSIVE after the log's tail is replayed
(milliseconds at any size). Its phases commit one by
one; an interrupted run resumes with the same command. After an upgrade the
previous table stays in step (the window): `alembic downgrade -1` is then an
exchange back, refused with the ids when rows written since break the old
guard; `reserve swap finish` closes the window. What the online method cannot
carry to the new table (docs/OPERATIONS.md section 7) stops it before it
builds anything, naming the object.
Locked (-x swap_method=locked; offline scripts always): the guards are swapped
in place under ACCESS EXCLUSIVE, held while PostgreSQL builds and checks the
new guard's index (26 s up at 1M rows, make bench); the rollback restores the
guard first, then builds the redundant index concurrently (it waits for older
transactions, blocking nobody).
Locks (reserve.schema.locks, per method): taken with a short lock_timeout and
bounded retries (-x swap_lock_timeout=2s, swap_lock_attempts=5, swap_lock_pause=3).
"""

from __future__ import annotations

from alembic import op

from reserve.schema import migration
from reserve.schema.guards import OLD_GUARD, REDUNDANT_INDEX, redundant_index_sql

revision = "0004_allocations_no_overlap"
down_revision = "0003c_maintenance_role"


def upgrade() -> None:
    new_guard = migration.new_guard()
    if not (migration.guard_in_place(OLD_GUARD) or migration.guard_in_place(new_guard)):
        migration.refuse_violations(new_guard, "add allocations_no_overlap")
    if migration.swap_method() == "online":
        migration.swap_online(revision, "upgrade")
        return
    migration.refuse_while_swapping(f"upgrade {revision}")
    migration.take_locks(revision, "upgrade", method="locked")
    op.execute(OLD_GUARD.drop_sql())
    op.execute(f"DROP INDEX public.{REDUNDANT_INDEX}")
    migration.add_guard(new_guard, "add allocations_no_overlap")


def downgrade() -> None:
    if migration.swap_method() == "online":
        if not (migration.swap_window_open() or migration.guard_in_place(OLD_GUARD)):
            migration.refuse_violations(OLD_GUARD, "restore allocations_resource_window_excl")
        migration.swap_online(revision, "downgrade")
        return
    migration.refuse_while_swapping(f"downgrade {revision}")
    if not migration.guard_in_place(OLD_GUARD):  # else an earlier run restored it: straight to the index
        migration.refuse_violations(OLD_GUARD, "restore allocations_resource_window_excl")
        migration.take_locks(revision, "downgrade", method="locked")
        op.execute(migration.new_guard().drop_sql())
        migration.add_guard(OLD_GUARD, "restore allocations_resource_window_excl")
    migration.build_index_after_commit(REDUNDANT_INDEX, lambda name: redundant_index_sql(name, concurrently=True),
                                       step=f"downgrade {revision}", done=f"{OLD_GUARD.name} is restored")
