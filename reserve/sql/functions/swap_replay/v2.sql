-- swap_replay v2: the online swap's replayer (reserve.schema.swap.changelog), called by the swap
-- itself, by `reserve swap follow` and by the pg_cron job. One call, in the caller's READ COMMITTED
-- transaction: take up to max_rows rows of reserve_swap.log, make the shadow's version of each id
-- they name equal to the live table's committed version (or absent), and delete exactly the log
-- rows taken. Returns how many log rows it consumed, or NULL when wait is false and another
-- replayer holds the replay's lock (a follower skips its turn rather than queue behind a mover).
--
-- Why it loses nothing: a log row becomes visible only when the write that appended it commits, and
-- each statement below reads the live table with a snapshot taken after the log rows were taken, so
-- it sees that write or a later one; a later write appends a log row this call did not take. The
-- writer's snapshot is never used. That holds only under READ COMMITTED (a snapshot per statement):
-- under REPEATABLE READ or SERIALIZABLE every statement would read with the snapshot of the
-- transaction's first statement, taken before any lock it waited for, so the call refuses (55000)
-- instead. It refuses as well where session_replication_role is not origin (the shadow's foreign
-- keys would not be checked); row_security is off for its statements, so that a read row-level
-- security would filter raises (42501) instead of replaying a partial table.
--
-- Against the application's locks: before it touches a shadow row it takes FOR KEY SHARE on the
-- bookings and restaurants that the rows it deletes and copies point at (the tables allocations'
-- foreign keys reference), in key order. The application locks those parents first too (a
-- booking locked FOR UPDATE, then deleted, cascading into both tables): the two wait in the same
-- order and never deadlock.
--
-- One replayer at a time (a transaction-level advisory lock, also held by the backfill's bulk copy,
-- whose stale copies must always be followed by their replay).
--
-- The shadow's guard, when it has one (named in reserve_swap.state), is checked before the copy, set
-- based: a live row that the guard would refuse (it overlaps a shadow row on the guard's key, or an
-- earlier-logged row of the same batch) is not copied but recorded in
-- reserve_swap.conflicts (id, SQLSTATE 23P01, reason); every recorded conflict is tried again at
-- each call. No subtransaction per row: one batch costs the same transaction ids with a conflict
-- as without. Only a failure the check cannot foresee makes the batch go again a row at a time.
DROP FUNCTION IF EXISTS reserve_swap.replay(integer);
CREATE OR REPLACE FUNCTION reserve_swap.replay(max_rows integer DEFAULT 10000, wait boolean DEFAULT true)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $fn$
DECLARE
  guard text;
  scoped boolean;
  refused uuid[] := '{}'::uuid[];
  ids uuid[];
  consumed integer;
  truncated boolean;
  allocation uuid;
  failed_state text;
  failed_detail text;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'reserve_swap.replay needs READ COMMITTED, not %', current_setting('transaction_isolation')
      USING ERRCODE = '55000',
            HINT = 'Under a snapshot taken before its locks it would miss writes: SET TRANSACTION ISOLATION LEVEL READ COMMITTED first.';
  END IF;
  IF current_setting('session_replication_role') <> 'origin' THEN
    RAISE EXCEPTION 'reserve_swap.replay needs session_replication_role origin, not %',
      current_setting('session_replication_role') USING ERRCODE = '55000';
  END IF;
  IF wait THEN
    PERFORM pg_advisory_xact_lock(hashtext('reserve_swap.replay'));
  ELSIF NOT pg_try_advisory_xact_lock(hashtext('reserve_swap.replay')) THEN
    RETURN NULL;
  END IF;
  -- The ids in the order they were first written (when two of them contend for the guard, the earlier one
  -- is kept), then the recorded conflicts.
  WITH taken AS (
    DELETE FROM reserve_swap.log
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM reserve_swap.log LIMIT max_rows))
    RETURNING seq, allocation_id
  ), firsts AS (
    SELECT allocation_id, min(seq) AS first_seq FROM taken WHERE allocation_id IS NOT NULL GROUP BY allocation_id
  )
  SELECT (SELECT count(*) FROM taken), (SELECT bool_or(allocation_id IS NULL) FROM taken),
         ARRAY(SELECT allocation_id FROM firsts ORDER BY first_seq)
  INTO consumed, truncated, ids;
  truncated := COALESCE(truncated, false);
  ids := ids || ARRAY(SELECT allocation_id FROM reserve_swap.conflicts WHERE allocation_id <> ALL (ids)
                      ORDER BY recorded_at);
  IF truncated THEN
    DELETE FROM reserve_swap.allocations s WHERE NOT EXISTS (SELECT 1 FROM public.allocations l WHERE l.id = s.id);
  END IF;
  IF cardinality(ids) = 0 THEN
    IF truncated THEN
      DELETE FROM reserve_swap.conflicts;
    END IF;
    RETURN consumed;
  END IF;
  -- The referenced rows first, in the application's order (parents, then allocations), in key order.
  PERFORM 1 FROM public.bookings b
  WHERE b.id IN (SELECT l.booking_id FROM public.allocations l WHERE l.id = ANY (ids)
                 UNION SELECT s.booking_id FROM reserve_swap.allocations s WHERE s.id = ANY (ids))
  ORDER BY b.id FOR KEY SHARE OF b;
  PERFORM 1 FROM public.restaurants r
  WHERE r.id IN (SELECT l.restaurant_id FROM public.allocations l WHERE l.id = ANY (ids)
                 UNION SELECT s.restaurant_id FROM reserve_swap.allocations s WHERE s.id = ANY (ids))
  ORDER BY r.id FOR KEY SHARE OF r;
  DELETE FROM reserve_swap.allocations WHERE id = ANY (ids);
  -- The guard: the old one excludes one resource booked twice at once anywhere, the new one within a
  -- restaurant (its key holds restaurant_id); both only among rows that are not shadow bookings.
  SELECT c.conname::text, 'restaurant_id' = ANY (SELECT a.attname::text FROM pg_attribute a
                                                 WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
    INTO guard, scoped
  FROM reserve_swap.state st
  JOIN pg_constraint c ON c.conname = st.standby_guard AND c.conrelid = 'reserve_swap.allocations'::regclass
                      AND c.contype = 'x';
  IF guard IS NOT NULL THEN
    EXECUTE format('SET CONSTRAINTS reserve_swap.%I IMMEDIATE', guard);
    WITH candidates AS (
      SELECT l.*, array_position(ids, l.id) AS position FROM public.allocations l WHERE l.id = ANY (ids) AND NOT l.shadow
    )
    SELECT ARRAY(
      SELECT n.id FROM candidates n
      WHERE EXISTS (SELECT 1 FROM reserve_swap.allocations o
                    WHERE NOT o.shadow AND o.resource_type = n.resource_type AND o.resource_id = n.resource_id
                      AND (NOT scoped OR o.restaurant_id = n.restaurant_id) AND o."window" && n."window")
      UNION  -- an earlier-logged row of the batch on the same key (a hash join on the resource)
      SELECT n.id FROM candidates n JOIN candidates o
        ON o.resource_type = n.resource_type AND o.resource_id = n.resource_id
       AND (NOT scoped OR o.restaurant_id = n.restaurant_id) AND o.position < n.position AND o."window" && n."window")
    INTO refused;
  END IF;
  BEGIN  -- one subtransaction for the batch, never the application's
    INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations WHERE id = ANY (ids) AND id <> ALL (refused);
    DELETE FROM reserve_swap.conflicts WHERE allocation_id = ANY (ids) AND allocation_id <> ALL (refused);
    INSERT INTO reserve_swap.conflicts (allocation_id, sqlstate, detail)
    SELECT r, '23P01', format('conflicting key value violates exclusion constraint "%s"', guard) FROM unnest(refused) r
    ON CONFLICT (allocation_id) DO UPDATE SET sqlstate = EXCLUDED.sqlstate, detail = EXCLUDED.detail, recorded_at = now();
  EXCEPTION WHEN OTHERS THEN  -- what the check did not foresee: the batch again, a row at a time
    FOREACH allocation IN ARRAY ids LOOP
      BEGIN
        INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations WHERE id = allocation;
        DELETE FROM reserve_swap.conflicts WHERE allocation_id = allocation;
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS failed_state = RETURNED_SQLSTATE, failed_detail = MESSAGE_TEXT;
        INSERT INTO reserve_swap.conflicts (allocation_id, sqlstate, detail)
        VALUES (allocation, failed_state, left(failed_detail, 500))
        ON CONFLICT (allocation_id) DO UPDATE
          SET sqlstate = EXCLUDED.sqlstate, detail = EXCLUDED.detail, recorded_at = now();
      END;
    END LOOP;
  END;
  RETURN consumed;
END;
$fn$;
REVOKE ALL ON FUNCTION reserve_swap.replay(integer, boolean) FROM PUBLIC;
