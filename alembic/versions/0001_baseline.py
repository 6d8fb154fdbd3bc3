"""Baseline: the booking schema as it stood before the capacity-overlap change.

Revision ID: 0001_baseline
Revises: (none)

Upgrade: extensions btree_gist and pgcrypto (reused where installed, else in
schema "extensions"); roles anon, authenticated, service_role if missing;
enums, tables and keys, including the old guard
allocations_resource_window_excl (DEFERRABLE INITIALLY DEFERRED) and the
index allocations_resource_window_idx; the tenant-context functions; RLS,
policies and grants; apply_booking_state_transition v1,
assign_tables_atomic_v2 v1 and confirm_hold_assignment_tx v11.
Downgrade: drops all of it, data included; keeps cluster roles and any
extension that was installed before.
Existing databases that already hold this schema are adopted with
`reserve adopt` (check, then `alembic stamp 0001_baseline`), not upgraded.
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0001_baseline"
down_revision = None

CONTEXT_FUNCTIONS = [
    ("current_restaurant_id", "v1"),
    ("require_restaurant_context", "v1"),
    ("set_restaurant_context", "v1"),
]
CAPACITY_FUNCTIONS = [
    ("apply_booking_state_transition", "v1"),
    ("assign_tables_atomic_v2", "v1"),
    ("confirm_hold_assignment_tx", "v11"),
]


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.run_schema_script("0001_baseline_up")
    for name, version in CONTEXT_FUNCTIONS:
        migration.install_function(name, version)
    migration.run_schema_script("0001_baseline_rls")
    for name, version in CAPACITY_FUNCTIONS:
        migration.install_function(name, version)


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.run_schema_script("0001_baseline_down")
