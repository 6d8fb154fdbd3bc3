-- 0003c_maintenance_role downgrade: EXECUTE on the purge back to service_role, exactly as
-- 0003a_operations granted it. The role reserve_maintenance stays, as every cluster role
-- does (other databases may use it), and so does the migrating role's membership in it.

REVOKE EXECUTE ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) FROM reserve_maintenance;
GRANT EXECUTE ON FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean) TO service_role;
REVOKE USAGE ON SCHEMA public FROM reserve_maintenance;
