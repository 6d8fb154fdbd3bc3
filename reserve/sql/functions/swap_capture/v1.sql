-- swap_capture v1: the online swap's capture (reserve.schema.swap.changelog). One row trigger,
-- reserve_swap_capture, and one statement trigger, reserve_swap_capture_truncate, on the live table,
-- both ENABLE ALWAYS (they fire for replica-role sessions too: logical replication's apply workers,
-- pg_restore --disable-triggers, ETL tools). Each appends to reserve_swap.log and does nothing else:
-- no read of the shadow, no EXCEPTION block (no subtransaction, no extra transaction id), nothing that
-- can fail the application's write short of the disk being full. The replayer
-- (reserve_swap.replay) makes the shadow's version of each logged id equal to the live table's
-- committed one, in its own transactions, whatever the writer's isolation level.
--
-- An UPDATE that changes the id logs both ids; a TRUNCATE logs a marker (allocation_id NULL): every
-- shadow row absent from the live table goes at its replay.
CREATE OR REPLACE FUNCTION reserve_swap.capture()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO reserve_swap.log (allocation_id) VALUES (NULL);
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO reserve_swap.log (allocation_id) VALUES (NEW.id);
  ELSIF TG_OP = 'DELETE' OR NEW.id = OLD.id THEN
    INSERT INTO reserve_swap.log (allocation_id) VALUES (OLD.id);
  ELSE
    INSERT INTO reserve_swap.log (allocation_id) VALUES (OLD.id), (NEW.id);
  END IF;
  RETURN NULL;
END;
$fn$;
REVOKE ALL ON FUNCTION reserve_swap.capture() FROM PUBLIC;
