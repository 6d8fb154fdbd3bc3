-- 0003c_maintenance_role: retention is platform work, not a venue's.
-- purge_booking_confirmation_results is SECURITY DEFINER and deletes the old evidence of
-- every venue, past RLS; service_role acts for one venue at a time, so with it any venue
-- could purge all venues' evidence. EXECUTE moves to a dedicated NOLOGIN role, which
-- `reserve retention` and the scheduler's job take with SET ROLE. Catalog changes only.

DO $role$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reserve_maintenance') THEN
    CREATE ROLE reserve_maintenance NOLOGIN NOBYPASSRLS;
    COMMENT ON ROLE reserve_maintenance IS 'platform maintenance of reserve-migrations (retention); never a venue';
  END IF;
END
$role$;
-- The migrating role may act as it (SET ROLE reserve_maintenance): that is how retention runs.
GRANT reserve_maintenance TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO reserve_maintenance;

REVOKE EXECUTE ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) FROM service_role;
GRANT EXECUTE ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) TO reserve_maintenance;
