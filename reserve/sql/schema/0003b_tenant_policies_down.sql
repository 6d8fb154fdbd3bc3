-- 0003b_tenant_policies downgrade: the policies exactly as 0003a_operations left them
-- (0001_baseline_rls.sql, and reserve.migration.protect_tenant_table for the two tables
-- of 0002 and 0003a). Catalog changes only, as the upgrade.

ALTER POLICY "Tenant service role can manage table inventory" ON public.table_inventory
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage bookings" ON public.bookings
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage allocations" ON public.allocations
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage table holds" ON public.table_holds
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage booking table assignments" ON public.booking_table_assignments
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context())
          AND EXISTS (SELECT 1 FROM public.table_inventory t
                      WHERE t.id = table_id AND t.restaurant_id = public.require_restaurant_context()));
ALTER POLICY "Tenant service role can manage booking assignment idempotency" ON public.booking_assignment_idempotency
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context()));
ALTER POLICY "Tenant service role can manage capacity outbox" ON public.capacity_outbox
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage booking confirmation results" ON public.booking_confirmation_results
  WITH CHECK (restaurant_id = public.require_restaurant_context());
ALTER POLICY "Tenant service role can manage confirmation cache events" ON public.confirmation_cache_events
  WITH CHECK (restaurant_id = public.require_restaurant_context());

DROP POLICY "Tenant service role can read feature flag overrides" ON public.feature_flag_overrides;
DROP POLICY "Tenant service role can insert feature flag overrides" ON public.feature_flag_overrides;
DROP POLICY "Tenant service role can update feature flag overrides" ON public.feature_flag_overrides;
DROP POLICY "Tenant service role can delete feature flag overrides" ON public.feature_flag_overrides;
CREATE POLICY "Tenant service role can manage feature flag overrides" ON public.feature_flag_overrides
  FOR ALL TO service_role
  USING (restaurant_id IS NULL OR restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());
