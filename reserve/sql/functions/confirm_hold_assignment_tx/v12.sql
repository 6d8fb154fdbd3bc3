-- confirm_hold_assignment_tx v12: v11, plus the evidence. With an idempotency
-- key, every confirmation upserts its row in booking_confirmation_results
-- (booking, hold, restaurant, key, tables, window, actor, the hold's metadata,
-- checked_at) inside the same transaction, so a confirmation and its evidence
-- commit or vanish together. Works with either allocation guard.
CREATE OR REPLACE FUNCTION public.confirm_hold_assignment_tx(
  p_hold_id uuid,
  p_booking_id uuid,
  p_idempotency_key text,
  p_require_adjacency boolean DEFAULT false,
  p_assigned_by uuid DEFAULT NULL,
  p_window_start timestamptz DEFAULT NULL,
  p_window_end timestamptz DEFAULT NULL,
  p_expected_policy_version text DEFAULT NULL,
  p_expected_adjacency_hash text DEFAULT NULL,
  p_target_status public.booking_status DEFAULT NULL,
  p_history_reason text DEFAULT 'auto_assign_confirm',
  p_history_metadata jsonb DEFAULT '{}'::jsonb,
  p_history_changed_by uuid DEFAULT NULL
)
RETURNS TABLE(assignment_id uuid, table_id uuid, start_at timestamptz, end_at timestamptz, merge_group_id uuid)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
  v_hold public.table_holds%ROWTYPE;
  v_context uuid := public.current_restaurant_id();
  v_tables uuid[];
  v_window tstzrange;
  v_assigned uuid[];
  v_merge_group uuid;
  v_status public.booking_status;
  v_window_utc text;
BEGIN
  -- 1. Both window bounds or neither.
  IF (p_window_start IS NULL) <> (p_window_end IS NULL) THEN
    RAISE EXCEPTION 'Give both p_window_start and p_window_end, or neither' USING ERRCODE = '22023';
  END IF;

  -- 2. The hold: present, ours, alive, not empty.
  SELECT * INTO v_hold FROM public.table_holds h WHERE h.id = p_hold_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Hold % not found', p_hold_id USING ERRCODE = 'P0002';
  END IF;
  IF v_context IS NOT NULL AND v_context <> v_hold.restaurant_id THEN
    RAISE EXCEPTION 'Hold belongs to another restaurant' USING ERRCODE = '42501';
  END IF;
  IF v_hold.booking_id IS NOT NULL AND v_hold.booking_id <> p_booking_id THEN
    RAISE EXCEPTION 'Hold % is bound to another booking', p_hold_id USING ERRCODE = 'P0001';
  END IF;
  IF v_hold.expires_at <= now() THEN
    RAISE EXCEPTION 'Hold % has expired', p_hold_id USING ERRCODE = 'P0001';
  END IF;
  v_tables := ARRAY(SELECT m.table_id FROM public.table_hold_members m WHERE m.hold_id = p_hold_id ORDER BY m.table_id);
  IF cardinality(v_tables) = 0 THEN
    RAISE EXCEPTION 'Hold % has no tables', p_hold_id USING ERRCODE = 'P0001';
  END IF;

  -- 3. The caller's view of policy and adjacency must still be current.
  IF p_expected_policy_version IS NOT NULL AND v_hold.metadata->>'policyVersion' IS NOT NULL
     AND p_expected_policy_version <> v_hold.metadata->>'policyVersion' THEN
    RAISE EXCEPTION 'Policy version changed since the hold was made' USING ERRCODE = 'P0003';
  END IF;
  IF p_expected_adjacency_hash IS NOT NULL
     AND v_hold.metadata->'selection'->'snapshot'->'adjacency'->>'hash' IS NOT NULL
     AND p_expected_adjacency_hash <> v_hold.metadata->'selection'->'snapshot'->'adjacency'->>'hash' THEN
    RAISE EXCEPTION 'Adjacency snapshot changed since the hold was made' USING ERRCODE = 'P0003';
  END IF;

  -- 4. The window: the caller's, else the hold's.
  IF COALESCE(p_window_start, v_hold.start_at) IS NULL OR COALESCE(p_window_end, v_hold.end_at) IS NULL
     OR COALESCE(p_window_start, v_hold.start_at) >= COALESCE(p_window_end, v_hold.end_at) THEN
    RAISE EXCEPTION 'Assignment window is missing or empty' USING ERRCODE = '22000';
  END IF;
  v_window := tstzrange(COALESCE(p_window_start, v_hold.start_at), COALESCE(p_window_end, v_hold.end_at), '[)');

  -- The booking must exist before the hold is bound to it (else the binding
  -- below would fail on its foreign key instead of reporting "not found").
  IF p_booking_id IS NOT NULL THEN
    PERFORM 1 FROM public.bookings b WHERE b.id = p_booking_id FOR UPDATE;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Booking % not found', p_booking_id USING ERRCODE = 'P0002';
    END IF;
  END IF;

  -- The hold being confirmed is this booking's own, not a competing one.
  UPDATE public.table_holds h SET booking_id = p_booking_id WHERE h.id = p_hold_id AND h.booking_id IS NULL;

  -- 5. Assign. A replayed idempotency key returns the earlier assignment, whose
  -- window may differ from this hold's: from here on the window is the one
  -- actually assigned, so the checksum and the events describe what is booked.
  SELECT array_agg(a.table_id ORDER BY a.table_id), max(a.merge_group_id::text)::uuid,
         tstzrange(min(a.start_at), max(a.end_at), '[)')
  INTO v_assigned, v_merge_group, v_window
  FROM public.assign_tables_atomic_v2(
    p_booking_id, v_tables, p_idempotency_key, p_require_adjacency, p_assigned_by,
    lower(v_window), upper(v_window)) AS a;
  IF v_assigned IS NULL THEN
    RAISE EXCEPTION 'Assignment returned no tables' USING ERRCODE = 'P0003';
  END IF;

  -- 6. Status transition, with history.
  IF p_target_status IS NOT NULL THEN
    SELECT b.status INTO v_status FROM public.bookings b WHERE b.id = p_booking_id;
    IF v_status IS DISTINCT FROM p_target_status THEN
      PERFORM public.apply_booking_state_transition(
        p_booking_id, p_target_status, COALESCE(p_history_changed_by, p_assigned_by),
        p_history_reason, COALESCE(p_history_metadata, '{}'::jsonb));
    END IF;
  END IF;

  v_window_utc := to_char(lower(v_window) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    || '/' || to_char(upper(v_window) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

  -- 7. Checksum of what was confirmed, for replay verification: sha256, as
  -- lowercase hex, of the UTF-8 text
  --   <booking id>|<table ids, sorted, joined by ','>|<window UTC>|<actor, or ''>|<hold id>
  -- where <window UTC> is v_window_utc: start and end as
  -- YYYY-MM-DDTHH:MI:SS.ffffffZ in UTC, joined by '/'.
  IF p_idempotency_key IS NOT NULL THEN
    UPDATE public.booking_assignment_idempotency i
    SET payload_checksum = encode(sha256(convert_to(concat_ws('|',
          p_booking_id::text, array_to_string(v_assigned, ','), v_window_utc,
          COALESCE(p_assigned_by::text, ''), p_hold_id::text), 'UTF8')), 'hex')
    WHERE i.booking_id = p_booking_id AND i.idempotency_key = p_idempotency_key;
  END IF;

  -- 7b. Evidence of the confirmation (v12).
  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.booking_confirmation_results AS r
      (booking_id, hold_id, restaurant_id, idempotency_key, table_ids, assignment_window, actor_id, metadata, checked_at)
    VALUES (p_booking_id, p_hold_id, v_hold.restaurant_id, p_idempotency_key, v_assigned, v_window,
            p_assigned_by, v_hold.metadata, now())
    ON CONFLICT (booking_id, idempotency_key) DO UPDATE SET
      hold_id = EXCLUDED.hold_id, restaurant_id = EXCLUDED.restaurant_id, table_ids = EXCLUDED.table_ids,
      assignment_window = EXCLUDED.assignment_window, actor_id = EXCLUDED.actor_id,
      metadata = EXCLUDED.metadata, checked_at = EXCLUDED.checked_at;
  END IF;

  -- 8. Outbox events, once per dedupe key.
  INSERT INTO public.capacity_outbox (event_type, dedupe_key, restaurant_id, booking_id, idempotency_key, payload)
  VALUES (
    'capacity.assignment.sync',
    concat_ws(':', p_booking_id::text, v_window_utc, array_to_string(v_assigned, ',')),
    v_hold.restaurant_id, p_booking_id, p_idempotency_key,
    jsonb_build_object('bookingId', p_booking_id, 'holdId', p_hold_id, 'tableIds', to_jsonb(v_assigned),
                       'window', v_window_utc, 'mergeGroupId', v_merge_group)
  ), (
    'capacity.hold.confirmed',
    p_booking_id::text || ':' || p_hold_id::text || ':hold.confirmed',
    v_hold.restaurant_id, p_booking_id, p_idempotency_key,
    jsonb_build_object('bookingId', p_booking_id, 'holdId', p_hold_id, 'tableIds', to_jsonb(v_assigned))
  )
  ON CONFLICT (dedupe_key) DO NOTHING;

  -- 9. The hold is consumed.
  DELETE FROM public.table_holds h WHERE h.id = p_hold_id;

  RETURN QUERY
    SELECT bta.id, bta.table_id, bta.start_at, bta.end_at, bta.merge_group_id
    FROM public.booking_table_assignments bta
    WHERE bta.booking_id = p_booking_id AND bta.table_id = ANY (v_assigned)
    ORDER BY bta.table_id;
END;
$fn$;
REVOKE ALL ON FUNCTION public.confirm_hold_assignment_tx(uuid, uuid, text, boolean, uuid, timestamptz, timestamptz, text, text, public.booking_status, text, jsonb, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.confirm_hold_assignment_tx(uuid, uuid, text, boolean, uuid, timestamptz, timestamptz, text, text, public.booking_status, text, jsonb, uuid) TO service_role;
