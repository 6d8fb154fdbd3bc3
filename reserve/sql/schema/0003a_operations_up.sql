-- 0003a_operations: a valid adjacency-mode flag, and durable confirm-client cache statistics.
-- Rows that break the check were refused by id before this runs
-- (0003a_operations_invalid_flags.sql), so the validation cannot fail.
ALTER TABLE public.feature_flag_overrides ADD CONSTRAINT feature_flag_overrides_adjacency_mode_check
  CHECK (flag_key <> 'allocator.adjacency_mode' OR flag_value IN ('connected', 'pairwise', 'neighbors')) NOT VALID;
ALTER TABLE public.feature_flag_overrides VALIDATE CONSTRAINT feature_flag_overrides_adjacency_mode_check;

-- One row per confirm-client lookup ('hit': a replay served from booking_confirmation_results,
-- 'miss': a confirmation run), so the hit rate is plain SQL. Append-only: no hot counter row for
-- concurrent confirmations to queue on. IF NOT EXISTS: an archived table may have come back.
CREATE TABLE IF NOT EXISTS public.confirmation_cache_events (
  id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT confirmation_cache_events_pkey PRIMARY KEY,
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  idempotency_key text NOT NULL,
  outcome text NOT NULL CONSTRAINT confirmation_cache_events_outcome_check CHECK (outcome IN ('hit', 'miss')),
  recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS confirmation_cache_events_recorded_at_idx
  ON public.confirmation_cache_events (recorded_at);
CREATE INDEX IF NOT EXISTS confirmation_cache_events_restaurant_recorded_at_idx
  ON public.confirmation_cache_events (restaurant_id, recorded_at);
CREATE INDEX IF NOT EXISTS confirmation_cache_events_booking_id_idx
  ON public.confirmation_cache_events (booking_id);
