"""booking_confirmation_results: the evidence every confirmed hold leaves.

Revision ID: 0002_confirmation_results
Revises: 0001_baseline

Upgrade: bring the table back from reserve_archive if an earlier downgrade
archived it (same rows, byte for byte); otherwise create it
(reserve/sql/schema/0002_confirmation_results_up.sql). Then make sure of its
RLS, its one policy and its grants: service_role may manage only the rows of
require_restaurant_context(); anon and authenticated get nothing.
Downgrade: move the table with its rows to schema reserve_archive, which
grants nothing to anyone; an empty table is simply dropped. No row is deleted.
Checked first: nothing; no existing row is read.
Locks (reserve.schema.locks): SHARE ROW EXCLUSIVE on bookings and restaurants up (the
new foreign keys add their triggers there); ACCESS EXCLUSIVE on them down (an
empty table is dropped, which removes those triggers). Nothing on allocations.
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0002_confirmation_results"
down_revision = "0001_baseline"

TABLE = "booking_confirmation_results"
POLICY = "Tenant service role can manage booking confirmation results"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.restore_table(TABLE)
    migration.run_schema_script("0002_confirmation_results_up")
    migration.protect_tenant_table(TABLE, POLICY, "SELECT, INSERT, UPDATE, DELETE")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.archive_table(TABLE)
