-- set_restaurant_context v1: sets (or, with NULL, clears) the tenant for the
-- current transaction only, so a pooled connection never carries one
-- tenant's context into another client's transaction.
CREATE OR REPLACE FUNCTION public.set_restaurant_context(p_restaurant_id uuid)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
  PERFORM set_config('app.restaurant_id', COALESCE(p_restaurant_id::text, ''), true);
  RETURN p_restaurant_id;
END;
$fn$;
REVOKE ALL ON FUNCTION public.set_restaurant_context(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.set_restaurant_context(uuid) TO service_role;
