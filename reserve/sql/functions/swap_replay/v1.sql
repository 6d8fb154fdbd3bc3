-- swap_replay v1: the online swap's replayer (reserve.schema.swap.changelog), called by the swap
-- itself, by `reserve swap follow` and by the pg_cron job. One call, in the caller's READ COMMITTED
-- transaction: take up to max_rows rows of reserve_swap.log, make the shadow's version of each id
-- they name equal to the live table's committed version (or absent), and delete exactly the log
-- rows taken. Returns how many log rows it consumed.
--
-- Why it loses nothing: a log row becomes visible only when the write that appended it commits, and
-- each statement below reads the live table with a snapshot taken after the log rows were taken, so
-- it sees that write or a later one; a later write appends a log row this call did not take. The
-- writer's snapshot is never used. One replayer at a time (a transaction-level advisory lock, also
-- held by the backfill's bulk copy, whose stale copies must always be followed by their replay).
--
-- The shadow's guard, when it has one (named in reserve_swap.state), is checked inside the
-- statement; what it refuses is recorded in reserve_swap.conflicts (id, SQLSTATE, reason) and the
-- shadow then lacks that id; every recorded conflict is tried again at each call.
CREATE OR REPLACE FUNCTION reserve_swap.replay(max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  guard text;
  ids uuid[];
  consumed integer;
  truncated boolean;
  allocation uuid;
  failed_state text;
  failed_detail text;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('reserve_swap.replay'));
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
  SELECT c.conname INTO guard FROM reserve_swap.state st
    JOIN pg_constraint c ON c.conname = st.standby_guard AND c.conrelid = 'reserve_swap.allocations'::regclass;
  IF guard IS NOT NULL THEN
    EXECUTE format('SET CONSTRAINTS reserve_swap.%I IMMEDIATE', guard);
  END IF;
  DELETE FROM reserve_swap.allocations WHERE id = ANY (ids);
  BEGIN  -- the replayer's own subtransaction, never the application's
    INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations WHERE id = ANY (ids);
    DELETE FROM reserve_swap.conflicts WHERE allocation_id = ANY (ids);
  EXCEPTION WHEN OTHERS THEN  -- some row is refused: the batch again, a row at a time
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
REVOKE ALL ON FUNCTION reserve_swap.replay(integer) FROM PUBLIC;
