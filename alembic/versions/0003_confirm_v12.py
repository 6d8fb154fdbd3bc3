"""confirm_hold_assignment_tx v11 -> v12: every confirmation writes its evidence.

Revision ID: 0003_confirm_v12
Revises: 0002_confirmation_results

Upgrade: install v12 (reserve/sql/functions/confirm_hold_assignment_tx/v12.sql),
which upserts the booking_confirmation_results row in the confirmation's own
transaction. Same signature, grants and search_path as v11.
Downgrade: reinstall the released v11 file, exactly.
Locks: no table lock (CREATE OR REPLACE FUNCTION only).
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0003_confirm_v12"
down_revision = "0002_confirmation_results"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.install_function("confirm_hold_assignment_tx", "v12")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.install_function("confirm_hold_assignment_tx", "v11")
