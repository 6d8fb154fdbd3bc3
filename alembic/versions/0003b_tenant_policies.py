"""Tenant policies: a venue writes only rows that point at its own, and never the global flags.

Revision ID: 0003b_tenant_policies
Revises: 0003a_operations

Upgrade (reserve/sql/schema/0003b_tenant_policies_up.sql):
- service_role's WITH CHECK also requires every row it names to be of the same
  restaurant: the booking (allocations, table_holds, capacity_outbox,
  booking_confirmation_results, confirmation_cache_events), the zone
  (table_inventory, bookings.assigned_zone_id, table_holds), the allocation
  (booking_table_assignments, booking_assignment_idempotency) and the table of
  a 'table' allocation. USING is unchanged: each venue sees, updates and
  deletes the same rows as before.
- feature_flag_overrides: the FOR ALL policy becomes FOR SELECT (global and own
  rows) plus FOR INSERT, UPDATE, DELETE (own rows only), so global overrides
  are readable by every venue and writable by none but the table owner.
Downgrade (…_down.sql): the previous policies, exactly.
Checked first: nothing by the revision; existing rows are not rechecked (a
policy is not a constraint), and the SECURITY DEFINER functions run as the
table owner. `reserve preflight` lists, as a warning, existing rows that name
another restaurant's rows (reserve.schema.tenancy): service_role can no longer
update them after this revision.
Locks (reserve.schema.locks): ACCESS EXCLUSIVE on those ten tables and ACCESS SHARE on
zones (the new policies read it), taken first with the bounded wait and
retries every revision uses (-x swap_lock_timeout=2s, swap_lock_attempts=5,
swap_lock_pause=3): a table locked early waits at most 2 s for the others,
then all are released and retried after the pause. Then catalog changes only
(milliseconds); no row is read.
Kept before 0004, so that `alembic downgrade -1` from head stays the swap's
emergency rollback.
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0003b_tenant_policies"
down_revision = "0003a_operations"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.run_schema_script("0003b_tenant_policies_up")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.run_schema_script("0003b_tenant_policies_down")
