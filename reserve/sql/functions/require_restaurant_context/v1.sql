-- require_restaurant_context v1: like current_restaurant_id(), but a missing
-- tenant is an authorization error: RLS policies call it so that forgetting
-- the context fails loudly instead of returning an empty result.
CREATE OR REPLACE FUNCTION public.require_restaurant_context()
RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  v_restaurant uuid := public.current_restaurant_id();
BEGIN
  IF v_restaurant IS NULL THEN
    RAISE EXCEPTION 'Restaurant context is required' USING ERRCODE = '42501';
  END IF;
  RETURN v_restaurant;
END;
$fn$;
REVOKE ALL ON FUNCTION public.require_restaurant_context() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.require_restaurant_context() TO service_role;
