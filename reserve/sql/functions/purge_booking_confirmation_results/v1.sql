-- purge_booking_confirmation_results v1: retention for confirmation evidence.
-- One call deletes at most one batch of booking_confirmation_results rows whose
-- checked_at is before p_cutoff, and at most one batch of the matching
-- confirmation_cache_events (recorded_at before the cutoff), oldest first.
-- Rows locked by a running confirmation are skipped, never waited for, so a
-- call holds its row locks briefly and never queues behind the booking path.
-- Call it until more_remaining is false, one transaction per call
-- (`reserve retention` does; so can pg_cron:
--   SELECT * FROM purge_booking_confirmation_results(now() - interval '30 days', 1000);
-- every few minutes). A second run over the same cutoff deletes nothing.
-- p_dry_run: count every row older than the cutoff, delete nothing.
-- Refused with 22023: a NULL or non-positive batch size, a NULL cutoff, or a
-- cutoff less than one day in the past (replays of a confirmation are served
-- from its evidence; it must outlive any client's retries).
-- SECURITY DEFINER: retention is platform-wide, across all restaurants.
CREATE OR REPLACE FUNCTION public.purge_booking_confirmation_results(
  p_cutoff timestamptz,
  p_batch_size integer DEFAULT 1000,
  p_dry_run boolean DEFAULT false
)
RETURNS TABLE(evidence_rows bigint, cache_event_rows bigint, more_remaining boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  v_evidence bigint;
  v_events bigint;
BEGIN
  IF p_batch_size IS NULL OR p_batch_size <= 0 THEN
    RAISE EXCEPTION 'batch size must be a positive number of rows, got %', COALESCE(p_batch_size::text, 'NULL')
      USING ERRCODE = '22023';
  END IF;
  IF p_cutoff IS NULL THEN
    RAISE EXCEPTION 'a cutoff is required' USING ERRCODE = '22023';
  END IF;
  IF p_cutoff > now() - interval '1 day' THEN
    RAISE EXCEPTION 'cutoff % is less than one day in the past: evidence younger than a day is never purged', p_cutoff
      USING ERRCODE = '22023';
  END IF;

  IF p_dry_run THEN
    RETURN QUERY SELECT
      (SELECT count(*) FROM public.booking_confirmation_results r WHERE r.checked_at < p_cutoff),
      (SELECT count(*) FROM public.confirmation_cache_events e WHERE e.recorded_at < p_cutoff),
      false;
    RETURN;
  END IF;

  WITH doomed AS (
    SELECT r.booking_id, r.idempotency_key
    FROM public.booking_confirmation_results r
    WHERE r.checked_at < p_cutoff
    ORDER BY r.checked_at
    LIMIT p_batch_size
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM public.booking_confirmation_results r
    USING doomed d
    WHERE r.booking_id = d.booking_id AND r.idempotency_key = d.idempotency_key
    RETURNING 1
  )
  SELECT count(*) INTO v_evidence FROM gone;

  WITH doomed AS (
    SELECT e.id
    FROM public.confirmation_cache_events e
    WHERE e.recorded_at < p_cutoff
    ORDER BY e.recorded_at
    LIMIT p_batch_size
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM public.confirmation_cache_events e
    USING doomed d
    WHERE e.id = d.id
    RETURNING 1
  )
  SELECT count(*) INTO v_events FROM gone;

  RETURN QUERY SELECT v_evidence, v_events,
    EXISTS (SELECT 1 FROM public.booking_confirmation_results r WHERE r.checked_at < p_cutoff)
    OR EXISTS (SELECT 1 FROM public.confirmation_cache_events e WHERE e.recorded_at < p_cutoff);
END;
$fn$;
REVOKE ALL ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) TO service_role;
