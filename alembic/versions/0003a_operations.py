"""Operations after the deploy: a valid adjacency-mode flag, durable cache statistics, retention.

Revision ID: 0003a_operations
Revises: 0003_confirm_v12

Upgrade:
- feature_flag_overrides_adjacency_mode_check: flag 'allocator.adjacency_mode'
  holds 'connected', 'pairwise' or 'neighbors'. Checked first: rows that
  break it stop the upgrade, listing their ids (nothing is changed). Added
  NOT VALID, then validated.
- confirmation_cache_events: one row per confirm-client lookup ('hit': a
  replay served from booking_confirmation_results, 'miss': a confirmation
  run), so the hit rate is plain SQL. Append-only (no hot counter row for
  concurrent confirmations to queue on). Brought back from reserve_archive
  when an earlier downgrade archived it. RLS: service_role reads and inserts
  only the rows of require_restaurant_context(); anon and authenticated get
  nothing.
- purge_booking_confirmation_results v1: batched retention of evidence and
  cache events, for `reserve retention` and pg_cron; EXECUTE for service_role.
Downgrade: drop the function; archive confirmation_cache_events to
reserve_archive when it has rows (dropped when empty); drop the check.
Locks (reserve.schema.locks): ACCESS EXCLUSIVE on feature_flag_overrides (a small
table) for the check, SHARE ROW EXCLUSIVE on bookings and restaurants for the
cache table's foreign keys (ACCESS EXCLUSIVE on both down, when the empty table
is dropped); nothing on allocations. Kept before 0004 so that the lock-heavy
swap stays last and `alembic downgrade -1` is exactly the emergency rollback.
"""

from __future__ import annotations

from alembic import context, op
from alembic.util import CommandError

from reserve.schema import migration

revision = "0003a_operations"
down_revision = "0003_confirm_v12"
branch_labels = None
depends_on = None

FLAG_KEY = "allocator.adjacency_mode"
MODES = ("connected", "pairwise", "neighbors")
CHECK = "feature_flag_overrides_adjacency_mode_check"
CACHE_TABLE = "confirmation_cache_events"
CACHE_POLICY = "Tenant service role can manage confirmation cache events"
PURGE = "purge_booking_confirmation_results"
PURGE_SIGNATURE = f"public.{PURGE}(timestamptz, integer, boolean)"

_ALLOWED = ", ".join(f"'{mode}'" for mode in MODES)
_BAD_FLAG_ROWS = (
    f"SELECT id::text || ' (' || quote_literal(flag_value) || ')' FROM public.feature_flag_overrides "
    f"WHERE flag_key = '{FLAG_KEY}' AND flag_value NOT IN ({_ALLOWED}) ORDER BY id"
)
_REFUSAL = f"cannot add {CHECK}: feature_flag_overrides rows hold an invalid {FLAG_KEY} (allowed: {', '.join(MODES)})"


def _refuse_invalid_flag_rows() -> None:
    """Stop before anything changes when existing overrides would break the check, naming them."""
    if context.is_offline_mode():
        migration.execute(f"""
DO $check$
DECLARE
  v_rows text;
BEGIN
  SELECT string_agg(r, ', ') INTO v_rows FROM ({_BAD_FLAG_ROWS}) AS bad(r);
  IF v_rows IS NOT NULL THEN
    RAISE EXCEPTION '{_REFUSAL}: %', v_rows USING ERRCODE = '23514';
  END IF;
END
$check$""")
        return
    bad = [row[0] for row in op.get_bind().exec_driver_sql(_BAD_FLAG_ROWS)]
    if bad:
        raise CommandError(
            f"{_REFUSAL}: {', '.join(bad)}. Nothing was changed; fix or delete these rows "
            "(`reserve flags set/unset`), then upgrade again."
        )


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    _refuse_invalid_flag_rows()
    migration.execute(f"""
ALTER TABLE public.feature_flag_overrides ADD CONSTRAINT {CHECK}
  CHECK (flag_key <> '{FLAG_KEY}' OR flag_value IN ({_ALLOWED})) NOT VALID""")
    migration.execute(f"ALTER TABLE public.feature_flag_overrides VALIDATE CONSTRAINT {CHECK}")

    migration.restore_table(CACHE_TABLE)
    migration.execute(f"""
CREATE TABLE IF NOT EXISTS public.{CACHE_TABLE} (
  id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT {CACHE_TABLE}_pkey PRIMARY KEY,
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  idempotency_key text NOT NULL,
  outcome text NOT NULL CONSTRAINT {CACHE_TABLE}_outcome_check CHECK (outcome IN ('hit', 'miss')),
  recorded_at timestamptz NOT NULL DEFAULT now()
)""")
    migration.execute(f"CREATE INDEX IF NOT EXISTS {CACHE_TABLE}_recorded_at_idx ON public.{CACHE_TABLE} (recorded_at)")
    migration.execute(
        f"CREATE INDEX IF NOT EXISTS {CACHE_TABLE}_restaurant_recorded_at_idx "
        f"ON public.{CACHE_TABLE} (restaurant_id, recorded_at)"
    )
    migration.execute(f"CREATE INDEX IF NOT EXISTS {CACHE_TABLE}_booking_id_idx ON public.{CACHE_TABLE} (booking_id)")
    migration.protect_tenant_table(CACHE_TABLE, CACHE_POLICY, "SELECT, INSERT")

    migration.install_function(PURGE, "v1")


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    migration.execute(f"DROP FUNCTION {PURGE_SIGNATURE}")
    migration.archive_table(CACHE_TABLE)
    migration.execute(f"ALTER TABLE public.feature_flag_overrides DROP CONSTRAINT {CHECK}")
