-- current_restaurant_id v1: the tenant named by setting app.restaurant_id.
-- Unset or empty means "no tenant" (NULL); anything that is not a uuid is a
-- caller bug and must not silently read as "no tenant".
CREATE OR REPLACE FUNCTION public.current_restaurant_id()
RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  v_raw text := current_setting('app.restaurant_id', true);
BEGIN
  IF v_raw IS NULL OR btrim(v_raw) = '' THEN
    RETURN NULL;
  END IF;
  BEGIN
    RETURN btrim(v_raw)::uuid;
  EXCEPTION WHEN invalid_text_representation THEN
    RAISE EXCEPTION 'app.restaurant_id is not a valid uuid'
      USING ERRCODE = '22023', HINT = 'Set it with set_restaurant_context(uuid).';
  END;
END;
$fn$;
REVOKE ALL ON FUNCTION public.current_restaurant_id() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.current_restaurant_id() TO service_role;
