"""Retention owned by the platform: the purge runs as reserve_maintenance, never as a venue's service_role.

Revision ID: 0003c_maintenance_role
Revises: 0003b_tenant_policies

Why: purge_booking_confirmation_results is SECURITY DEFINER and deletes old
evidence of every venue, past RLS. Executable by service_role, which acts for
one venue at a time, it let any venue purge every venue's evidence.
Upgrade (reserve/sql/schema/0003c_maintenance_role_up.sql): role
reserve_maintenance (NOLOGIN, no BYPASSRLS) if missing, granted to the
migrating role; EXECUTE on the purge moves from service_role to it.
`reserve retention` (and a scheduler's job) run the purge after
SET ROLE reserve_maintenance.
Downgrade (…_down.sql): EXECUTE back to service_role exactly; the role stays
(cluster roles are never dropped).
Checked first: nothing; no data is read or changed.
Locks: none (grants only). Kept before 0004, so that `alembic downgrade -1`
from head stays the swap's emergency rollback.
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0003c_maintenance_role"
down_revision = "0003b_tenant_policies"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.run_schema_script("0003c_maintenance_role_up")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.run_schema_script("0003c_maintenance_role_down")
