-- 0001_baseline downgrade: remove everything the baseline created, data included.
-- Cluster roles stay (other databases may use them); extensions and the
-- "extensions" schema go only when this revision installed them.

DROP SCHEMA IF EXISTS reserve_archive CASCADE;

DROP FUNCTION IF EXISTS public.confirm_hold_assignment_tx(uuid, uuid, text, boolean, uuid, timestamptz, timestamptz, text, text, public.booking_status, text, jsonb, uuid);
DROP FUNCTION IF EXISTS public.assign_tables_atomic_v2(uuid, uuid[], text, boolean, uuid, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS public.apply_booking_state_transition(uuid, public.booking_status, uuid, text, jsonb);

DROP TABLE public.feature_flag_overrides, public.capacity_outbox, public.booking_assignment_idempotency,
  public.booking_table_assignments, public.table_hold_members, public.table_holds, public.allocations,
  public.booking_state_history, public.bookings, public.table_adjacencies, public.table_inventory,
  public.zones, public.restaurants;

DROP FUNCTION public.set_restaurant_context(uuid);
DROP FUNCTION public.require_restaurant_context();
DROP FUNCTION public.current_restaurant_id();

DROP TYPE public.table_mobility;
DROP TYPE public.table_status;
DROP TYPE public.booking_status;

DO $ext$
DECLARE
  ext text;
BEGIN
  FOREACH ext IN ARRAY ARRAY['pgcrypto', 'btree_gist'] LOOP
    IF EXISTS (SELECT 1 FROM pg_extension e JOIN pg_description d ON d.objoid = e.oid
               WHERE e.extname = ext AND d.description = 'installed by reserve-migrations 0001_baseline') THEN
      EXECUTE format('DROP EXTENSION %I', ext);
    END IF;
  END LOOP;
  IF EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_description d ON d.objoid = n.oid
             WHERE n.nspname = 'extensions' AND d.description = 'created by reserve-migrations 0001_baseline')
     AND NOT EXISTS (SELECT 1 FROM pg_depend dep JOIN pg_namespace n ON dep.refobjid = n.oid
                     WHERE n.nspname = 'extensions' AND dep.refclassid = 'pg_namespace'::regclass) THEN
    DROP SCHEMA extensions;
  END IF;
END
$ext$;
