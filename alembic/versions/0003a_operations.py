"""Operations after the deploy: a valid adjacency-mode flag, durable cache statistics, retention.

Revision ID: 0003a_operations
Revises: 0003_confirm_v12

Upgrade (reserve/sql/schema/0003a_operations_up.sql):
- feature_flag_overrides_adjacency_mode_check: flag 'allocator.adjacency_mode'
  holds 'connected', 'pairwise' or 'neighbors'. Added NOT VALID, then validated.
- confirmation_cache_events: one row per confirm-client lookup ('hit': a
  replay served from booking_confirmation_results, 'miss': a confirmation
  run), so the hit rate is plain SQL. Append-only. Brought back from
  reserve_archive when an earlier downgrade archived it. RLS: service_role
  reads and inserts only the rows of require_restaurant_context(); anon and
  authenticated get nothing.
- purge_booking_confirmation_results v1: batched retention of evidence and
  cache events (EXECUTE for service_role here; 0003c_maintenance_role moves it
  to the platform's maintenance role).
Checked first: overrides that would break the check stop the upgrade, listing
their ids (…_invalid_flags.sql); nothing is changed.
Downgrade (…_down.sql): drop the function and the check; archive
confirmation_cache_events to reserve_archive when it has rows (dropped when empty).
Locks (reserve.schema.locks): ACCESS EXCLUSIVE on feature_flag_overrides (a small
table) for the check, SHARE ROW EXCLUSIVE on bookings and restaurants for the
cache table's foreign keys (ACCESS EXCLUSIVE on both down, when the empty table
is dropped); nothing on allocations.
"""

from __future__ import annotations

from reserve import sql
from reserve.schema import migration

revision = "0003a_operations"
down_revision = "0003_confirm_v12"

CACHE_TABLE = "confirmation_cache_events"
CACHE_POLICY = "Tenant service role can manage confirmation cache events"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.refuse_rows(
        sql.read("schema/0003a_operations_invalid_flags.sql"),
        "cannot add feature_flag_overrides_adjacency_mode_check: feature_flag_overrides rows hold an invalid "
        "allocator.adjacency_mode (allowed: connected, pairwise, neighbors)",
        sqlstate="23514", remedy="fix or delete these rows (`reserve flags set/unset`), then upgrade again.")
    migration.restore_table(CACHE_TABLE)
    migration.run_schema_script("0003a_operations_up")
    migration.protect_tenant_table(CACHE_TABLE, CACHE_POLICY, "SELECT, INSERT")
    migration.install_function("purge_booking_confirmation_results", "v1")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.run_schema_script("0003a_operations_down")
    migration.archive_table(CACHE_TABLE)
