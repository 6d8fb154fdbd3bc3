-- swap_mirror v1: the online swap's mirror (reserve.schema.swap.mirror), one function behind its three
-- triggers. It keeps reserve_swap.allocations (the standby) in step with every committed write to
-- public.allocations, and never fails the application's write:
--
-- * as the row trigger reserve_swap_stage on public.allocations, inside the writing statement: remove
--   the standby's version of the row and queue its id in reserve_swap.pending;
-- * as the deferred constraint trigger reserve_swap_apply on reserve_swap.pending, at commit (after
--   every statement of the transaction, so a transaction that passes through temporary overlaps, as
--   the INITIALLY DEFERRED old guard allows, is mirrored by its final state): copy the committed
--   version of the row. TG_ARGV[0] names the standby's guard, checked here, inside the block, even
--   when it is INITIALLY DEFERRED;
-- * as the statement trigger reserve_swap_truncate on public.allocations: empty the standby.
--
-- A row the standby cannot take (the old guard refuses the same resource in two restaurants at once;
-- any other error) is recorded in reserve_swap.conflicts instead, and the write goes through.
CREATE OR REPLACE FUNCTION reserve_swap.mirror()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  allocation uuid;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    TRUNCATE reserve_swap.allocations, reserve_swap.pending;
    DELETE FROM reserve_swap.conflicts;
    RETURN NULL;
  END IF;
  allocation := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
  BEGIN
    IF TG_TABLE_SCHEMA = 'reserve_swap' THEN  -- reserve_swap_apply, at commit
      DELETE FROM reserve_swap.pending WHERE id = allocation;
      EXECUTE format('SET CONSTRAINTS reserve_swap.%I IMMEDIATE', TG_ARGV[0]);
      DELETE FROM reserve_swap.allocations WHERE id = allocation;
      INSERT INTO reserve_swap.allocations SELECT * FROM public.allocations WHERE id = allocation;
      DELETE FROM reserve_swap.conflicts WHERE allocation_id = allocation;
    ELSE  -- reserve_swap_stage, in the writing statement
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM reserve_swap.allocations WHERE id = OLD.id;
      END IF;
      IF TG_OP = 'DELETE' THEN
        DELETE FROM reserve_swap.conflicts WHERE allocation_id = allocation;
      ELSE
        INSERT INTO reserve_swap.pending (id) VALUES (allocation) ON CONFLICT (id) DO NOTHING;
      END IF;
    END IF;
  EXCEPTION WHEN OTHERS THEN
    INSERT INTO reserve_swap.conflicts (allocation_id, sqlstate, detail)
    VALUES (allocation, SQLSTATE, SQLERRM)
    ON CONFLICT (allocation_id) DO UPDATE
      SET sqlstate = EXCLUDED.sqlstate, detail = EXCLUDED.detail, recorded_at = now();
  END;
  RETURN NULL;
END;
$fn$;
REVOKE ALL ON FUNCTION reserve_swap.mirror() FROM PUBLIC;
