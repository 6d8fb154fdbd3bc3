-- 0002_confirmation_results: the evidence every confirmed hold leaves. IF NOT EXISTS: an
-- upgrade after a downgrade has brought the archived table (and its rows) back already.
CREATE TABLE IF NOT EXISTS public.booking_confirmation_results (
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  hold_id uuid NOT NULL,
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  idempotency_key text NOT NULL,
  table_ids uuid[] NOT NULL,
  assignment_window tstzrange NOT NULL,
  actor_id uuid,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  checked_at timestamptz NOT NULL DEFAULT now(),
  -- The primary key also serves lookups by booking_id (its leading column).
  CONSTRAINT booking_confirmation_results_pkey PRIMARY KEY (booking_id, idempotency_key),
  CONSTRAINT booking_confirmation_results_hold_id_key UNIQUE (hold_id)
);
-- Every index here is paid by every confirmation (v12 writes a row each time): only the
-- lookups needed, by booking_id (the primary key) and by checked_at (retention).
CREATE INDEX IF NOT EXISTS booking_confirmation_results_checked_at_idx
  ON public.booking_confirmation_results (checked_at);
