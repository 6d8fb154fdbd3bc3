"""booking_confirmation_results: the evidence every confirmed hold leaves.

Revision ID: 0002_confirmation_results
Revises: 0001_baseline

Upgrade: bring the table back from reserve_archive if an earlier downgrade
archived it (same rows, byte for byte); otherwise create it. Then make sure of
its RLS, its one policy and its grants: service_role may manage only the rows
of require_restaurant_context(); anon and authenticated get nothing.
Downgrade: move the table with its rows to schema reserve_archive, which
grants nothing to anyone; an empty table is simply dropped. No row is deleted.
Locks (reserve.schema.locks): SHARE ROW EXCLUSIVE on bookings and restaurants up (the
new foreign keys add their triggers there); ACCESS EXCLUSIVE on them down (an
empty table is dropped, which removes those triggers). Nothing on allocations.
"""

from __future__ import annotations

from reserve.schema import migration

revision = "0002_confirmation_results"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

TABLE = "booking_confirmation_results"
POLICY = "Tenant service role can manage booking confirmation results"


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    migration.restore_table(TABLE)
    migration.execute(f"""
CREATE TABLE IF NOT EXISTS public.{TABLE} (
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  hold_id uuid NOT NULL,
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  idempotency_key text NOT NULL,
  table_ids uuid[] NOT NULL,
  assignment_window tstzrange NOT NULL,
  actor_id uuid,
  metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  checked_at timestamptz NOT NULL DEFAULT now(),
  -- The primary key also serves lookups by booking_id (its leading column).
  CONSTRAINT {TABLE}_pkey PRIMARY KEY (booking_id, idempotency_key),
  CONSTRAINT {TABLE}_hold_id_key UNIQUE (hold_id)
)""")
    # Every index here is paid by every confirmation (v12 writes a row each time): only the
    # lookups SPEC 5 asks for, by booking_id (the primary key) and by checked_at (retention).
    migration.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_checked_at_idx ON public.{TABLE} (checked_at)")
    migration.protect_tenant_table(TABLE, POLICY, "SELECT, INSERT, UPDATE, DELETE")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.archive_table(TABLE)
