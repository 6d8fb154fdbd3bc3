-- assign_tables_atomic_v2 v1: assign a set of tables to a booking for a window.
-- Locks the booking, then the tables (in id order, so concurrent callers
-- cannot deadlock), checks every rule before writing anything, and writes
-- allocations, assignments and the idempotency record in the caller's
-- transaction. A replayed idempotency key returns the earlier result.
CREATE OR REPLACE FUNCTION public.assign_tables_atomic_v2(
  p_booking_id uuid,
  p_table_ids uuid[],
  p_idempotency_key text DEFAULT NULL,
  p_require_adjacency boolean DEFAULT false,
  p_assigned_by uuid DEFAULT NULL,
  p_start_at timestamptz DEFAULT NULL,
  p_end_at timestamptz DEFAULT NULL
)
RETURNS TABLE(table_id uuid, start_at timestamptz, end_at timestamptz, merge_group_id uuid)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
  v_booking public.bookings%ROWTYPE;
  v_context uuid := public.current_restaurant_id();
  v_tables uuid[];
  v_hash text;
  v_existing public.booking_assignment_idempotency%ROWTYPE;
  v_window tstzrange;
  v_zone uuid;
  v_bad record;
  v_merge_group uuid;
  v_merge_allocation uuid;
  v_table uuid;
  v_allocation uuid;
BEGIN
  IF p_booking_id IS NULL OR p_table_ids IS NULL OR cardinality(p_table_ids) = 0
     OR array_position(p_table_ids, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'booking id and a non-empty list of table ids are required' USING ERRCODE = '22023';
  END IF;

  SELECT * INTO v_booking FROM public.bookings b WHERE b.id = p_booking_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Booking % not found', p_booking_id USING ERRCODE = 'P0002';
  END IF;
  IF v_context IS NOT NULL AND v_context <> v_booking.restaurant_id THEN
    RAISE EXCEPTION 'Booking belongs to another restaurant' USING ERRCODE = '42501';
  END IF;

  v_tables := ARRAY(SELECT DISTINCT t FROM unnest(p_table_ids) AS t ORDER BY t);
  v_hash := encode(sha256(convert_to(array_to_string(v_tables, ','), 'UTF8')), 'hex');

  -- Idempotent replay: same key and same table set returns what was written.
  IF p_idempotency_key IS NOT NULL THEN
    SELECT * INTO v_existing FROM public.booking_assignment_idempotency i
    WHERE i.booking_id = p_booking_id AND i.idempotency_key = p_idempotency_key;
    IF FOUND THEN
      IF v_existing.table_set_hash <> v_hash THEN
        RAISE EXCEPTION 'Idempotency key % was used with a different table set', p_idempotency_key
          USING ERRCODE = 'P0003';
      END IF;
      RETURN QUERY
        SELECT a.table_id, lower(v_existing.assignment_window), upper(v_existing.assignment_window), a.merge_group_id
        FROM public.booking_table_assignments a
        WHERE a.booking_id = p_booking_id AND a.table_id = ANY (v_existing.table_ids)
        ORDER BY a.table_id;
      RETURN;
    END IF;
  END IF;

  IF (p_start_at IS NULL) <> (p_end_at IS NULL) THEN
    RAISE EXCEPTION 'Give both window bounds or neither' USING ERRCODE = '22023';
  END IF;
  IF COALESCE(p_start_at, v_booking.start_at) IS NULL OR COALESCE(p_end_at, v_booking.end_at) IS NULL
     OR COALESCE(p_start_at, v_booking.start_at) >= COALESCE(p_end_at, v_booking.end_at) THEN
    RAISE EXCEPTION 'Assignment window is missing or empty' USING ERRCODE = '22000';
  END IF;
  v_window := tstzrange(COALESCE(p_start_at, v_booking.start_at), COALESCE(p_end_at, v_booking.end_at), '[)');

  -- Lock the tables in a fixed order, then check every rule before writing.
  PERFORM 1 FROM public.table_inventory t WHERE t.id = ANY (v_tables) ORDER BY t.id FOR UPDATE;

  SELECT t INTO v_table FROM unnest(v_tables) AS t
  WHERE NOT EXISTS (SELECT 1 FROM public.table_inventory ti WHERE ti.id = t) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'Table % not found', v_table USING ERRCODE = 'P0002';
  END IF;

  FOR v_bad IN
    SELECT ti.id, ti.restaurant_id, ti.active, ti.zone_id, ti.mobility
    FROM public.table_inventory ti WHERE ti.id = ANY (v_tables) ORDER BY ti.id
  LOOP
    IF v_bad.restaurant_id <> v_booking.restaurant_id THEN
      RAISE EXCEPTION 'Table % belongs to another restaurant', v_bad.id USING ERRCODE = '22023';
    ELSIF NOT v_bad.active THEN
      RAISE EXCEPTION 'Table % is inactive', v_bad.id USING ERRCODE = '22023';
    ELSIF v_bad.zone_id IS NULL THEN
      RAISE EXCEPTION 'Table % has no zone', v_bad.id USING ERRCODE = '22023';
    ELSIF cardinality(v_tables) > 1 AND v_bad.mobility = 'fixed' THEN
      RAISE EXCEPTION 'Table % is fixed and cannot be merged', v_bad.id USING ERRCODE = '22023';
    END IF;
  END LOOP;

  SELECT min(ti.zone_id::text)::uuid INTO v_zone FROM public.table_inventory ti WHERE ti.id = ANY (v_tables);
  IF (SELECT count(DISTINCT ti.zone_id) FROM public.table_inventory ti WHERE ti.id = ANY (v_tables)) > 1 THEN
    RAISE EXCEPTION 'Tables span more than one zone' USING ERRCODE = '22023';
  END IF;

  IF p_require_adjacency AND cardinality(v_tables) > 1 THEN
    SELECT t INTO v_table FROM unnest(v_tables) AS t
    WHERE NOT EXISTS (
      SELECT 1 FROM public.table_adjacencies adj
      WHERE (adj.table_a = t AND adj.table_b = ANY (v_tables))
         OR (adj.table_b = t AND adj.table_a = ANY (v_tables))
    ) LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'Table % is not adjacent to any other selected table', v_table USING ERRCODE = '22023';
    END IF;
  END IF;

  -- Another live hold (not this booking's) on any of these tables in this window.
  IF EXISTS (
    SELECT 1
    FROM public.table_holds h
    JOIN public.table_hold_members m ON m.hold_id = h.id
    WHERE m.table_id = ANY (v_tables)
      AND h.expires_at > now()
      AND h.booking_id IS DISTINCT FROM p_booking_id
      AND tstzrange(h.start_at, h.end_at, '[)') && v_window
  ) THEN
    RAISE EXCEPTION 'Tables are held by another live hold in this window' USING ERRCODE = 'P0001';
  END IF;

  -- Write. An overlap caught by an immediate guard is reported by its name.
  BEGIN
    IF cardinality(v_tables) > 1 THEN
      v_merge_group := gen_random_uuid();
      INSERT INTO public.allocations (booking_id, restaurant_id, resource_type, resource_id, "window", created_by)
      VALUES (p_booking_id, v_booking.restaurant_id, 'merge_group', v_merge_group, v_window, p_assigned_by)
      RETURNING id INTO v_merge_allocation;
    END IF;

    FOREACH v_table IN ARRAY v_tables LOOP
      INSERT INTO public.allocations AS al (booking_id, restaurant_id, resource_type, resource_id, "window", created_by)
      VALUES (p_booking_id, v_booking.restaurant_id, 'table', v_table, v_window, p_assigned_by)
      ON CONFLICT (booking_id, resource_type, resource_id)
        DO UPDATE SET "window" = EXCLUDED."window", created_by = EXCLUDED.created_by, updated_at = now()
      RETURNING al.id INTO v_allocation;

      INSERT INTO public.booking_table_assignments AS bta
        (booking_id, table_id, allocation_id, merge_group_id, idempotency_key, start_at, end_at, assigned_by)
      VALUES (p_booking_id, v_table, v_allocation, v_merge_group, p_idempotency_key,
              lower(v_window), upper(v_window), p_assigned_by)
      ON CONFLICT (booking_id, table_id) DO UPDATE SET
        allocation_id = EXCLUDED.allocation_id, merge_group_id = EXCLUDED.merge_group_id,
        idempotency_key = EXCLUDED.idempotency_key, start_at = EXCLUDED.start_at,
        end_at = EXCLUDED.end_at, assigned_by = EXCLUDED.assigned_by;
    END LOOP;
  EXCEPTION WHEN exclusion_violation THEN
    RAISE EXCEPTION 'allocations_no_overlap'
      USING ERRCODE = 'P0001', DETAIL = 'A requested table is already allocated in an overlapping window.';
  END;

  UPDATE public.bookings b SET assigned_zone_id = v_zone, updated_at = now() WHERE b.id = p_booking_id;

  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.booking_assignment_idempotency
      (booking_id, idempotency_key, table_set_hash, table_ids, assignment_window, merge_group_allocation_id)
    VALUES (p_booking_id, p_idempotency_key, v_hash, v_tables, v_window, v_merge_allocation);
  END IF;

  RETURN QUERY
    SELECT t, lower(v_window), upper(v_window), v_merge_group FROM unnest(v_tables) AS t ORDER BY t;
END;
$fn$;
REVOKE ALL ON FUNCTION public.assign_tables_atomic_v2(uuid, uuid[], text, boolean, uuid, timestamptz, timestamptz) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.assign_tables_atomic_v2(uuid, uuid[], text, boolean, uuid, timestamptz, timestamptz) TO service_role;
