-- apply_booking_state_transition v1: the only writer of bookings.status.
-- Validates the move against the lifecycle, updates the booking and records
-- who moved it and why in booking_state_history, all in the caller's
-- transaction. Returns the history row id.
CREATE OR REPLACE FUNCTION public.apply_booking_state_transition(
  p_booking_id uuid,
  p_to_status public.booking_status,
  p_changed_by uuid DEFAULT NULL,
  p_reason text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb
)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  v_booking public.bookings%ROWTYPE;
  v_context uuid := public.current_restaurant_id();
  v_history_id uuid;
  v_allowed boolean;
BEGIN
  IF p_booking_id IS NULL OR p_to_status IS NULL THEN
    RAISE EXCEPTION 'booking id and target status are required' USING ERRCODE = '22023';
  END IF;

  SELECT * INTO v_booking FROM public.bookings WHERE id = p_booking_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Booking % not found', p_booking_id USING ERRCODE = 'P0002';
  END IF;
  IF v_context IS NOT NULL AND v_context <> v_booking.restaurant_id THEN
    RAISE EXCEPTION 'Booking belongs to another restaurant' USING ERRCODE = '42501';
  END IF;

  v_allowed := CASE v_booking.status
    WHEN 'pending'            THEN p_to_status IN ('pending_allocation', 'confirmed', 'cancelled')
    WHEN 'pending_allocation' THEN p_to_status IN ('pending', 'confirmed', 'cancelled')
    WHEN 'confirmed'          THEN p_to_status IN ('pending_allocation', 'checked_in', 'cancelled', 'no_show')
    WHEN 'checked_in'         THEN p_to_status IN ('completed')
    ELSE false  -- completed, cancelled and no_show are final
  END;
  IF NOT v_allowed THEN
    RAISE EXCEPTION 'Invalid booking status transition from % to %', v_booking.status, p_to_status
      USING ERRCODE = 'P0001';
  END IF;

  UPDATE public.bookings SET status = p_to_status, updated_at = now() WHERE id = p_booking_id;

  INSERT INTO public.booking_state_history (booking_id, from_status, to_status, changed_by, reason, metadata)
  VALUES (p_booking_id, v_booking.status, p_to_status, p_changed_by, p_reason, COALESCE(p_metadata, '{}'::jsonb))
  RETURNING id INTO v_history_id;

  RETURN v_history_id;
END;
$fn$;
REVOKE ALL ON FUNCTION public.apply_booking_state_transition(uuid, public.booking_status, uuid, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.apply_booking_state_transition(uuid, public.booking_status, uuid, text, jsonb) TO service_role;
