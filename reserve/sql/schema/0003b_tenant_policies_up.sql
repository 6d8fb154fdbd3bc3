-- 0003b_tenant_policies: close two gaps in the tenant isolation of 0001_baseline_rls.sql.
--
-- 1. A row that names another tenant row must name one of its own tenant. The policies
--    below checked only the row's restaurant_id, so venue A could write a row of its own
--    pointing at venue B's booking, zone, allocation or table (squatting on B's unique
--    keys, or reaching B's rows through foreign-key actions). Only WITH CHECK (what a
--    venue may write) grows; USING (what it sees, updates and deletes) is unchanged.
--    The subqueries run under the same RLS, so they only ever find the tenant's rows.
-- 2. Global feature flag overrides (restaurant_id NULL) are readable by every venue and
--    writable by none: the FOR ALL policy, whose USING let any venue update or delete
--    them, becomes one policy per command.
--
-- Catalog changes only: no row is read. The revision has already locked every table
-- touched here (reserve.migration.EXCLUSIVE_LOCKS), in one bounded LOCK TABLE.

ALTER POLICY "Tenant service role can manage table inventory" ON public.table_inventory
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND (table_inventory.zone_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.zones z
                              WHERE z.id = table_inventory.zone_id
                                AND z.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage bookings" ON public.bookings
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND (bookings.assigned_zone_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.zones z
                              WHERE z.id = bookings.assigned_zone_id
                                AND z.restaurant_id = public.require_restaurant_context())));

-- resource_id has no foreign key: it is a table for resource_type 'table', a fresh id for a merge group.
ALTER POLICY "Tenant service role can manage allocations" ON public.allocations
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND (allocations.booking_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.bookings b
                              WHERE b.id = allocations.booking_id
                                AND b.restaurant_id = public.require_restaurant_context()))
              AND (allocations.resource_type <> 'table'
                   OR EXISTS (SELECT 1 FROM public.table_inventory t
                              WHERE t.id = allocations.resource_id
                                AND t.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage table holds" ON public.table_holds
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND (table_holds.zone_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.zones z
                              WHERE z.id = table_holds.zone_id
                                AND z.restaurant_id = public.require_restaurant_context()))
              AND (table_holds.booking_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.bookings b
                              WHERE b.id = table_holds.booking_id
                                AND b.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage booking table assignments" ON public.booking_table_assignments
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_table_assignments.booking_id
                        AND b.restaurant_id = public.require_restaurant_context())
              AND EXISTS (SELECT 1 FROM public.table_inventory t
                          WHERE t.id = booking_table_assignments.table_id
                            AND t.restaurant_id = public.require_restaurant_context())
              AND (booking_table_assignments.allocation_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.allocations a
                              WHERE a.id = booking_table_assignments.allocation_id
                                AND a.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage booking assignment idempotency" ON public.booking_assignment_idempotency
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_assignment_idempotency.booking_id
                        AND b.restaurant_id = public.require_restaurant_context())
              AND (booking_assignment_idempotency.merge_group_allocation_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.allocations a
                              WHERE a.id = booking_assignment_idempotency.merge_group_allocation_id
                                AND a.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage capacity outbox" ON public.capacity_outbox
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND (capacity_outbox.booking_id IS NULL
                   OR EXISTS (SELECT 1 FROM public.bookings b
                              WHERE b.id = capacity_outbox.booking_id
                                AND b.restaurant_id = public.require_restaurant_context())));

ALTER POLICY "Tenant service role can manage booking confirmation results" ON public.booking_confirmation_results
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND EXISTS (SELECT 1 FROM public.bookings b
                          WHERE b.id = booking_confirmation_results.booking_id
                            AND b.restaurant_id = public.require_restaurant_context()));

ALTER POLICY "Tenant service role can manage confirmation cache events" ON public.confirmation_cache_events
  WITH CHECK (restaurant_id = public.require_restaurant_context()
              AND EXISTS (SELECT 1 FROM public.bookings b
                          WHERE b.id = confirmation_cache_events.booking_id
                            AND b.restaurant_id = public.require_restaurant_context()));

-- Global overrides: read by every venue; written only by the table owner (`reserve flags`).
DROP POLICY "Tenant service role can manage feature flag overrides" ON public.feature_flag_overrides;
CREATE POLICY "Tenant service role can read feature flag overrides" ON public.feature_flag_overrides
  FOR SELECT TO service_role
  USING (restaurant_id IS NULL OR restaurant_id = public.require_restaurant_context());
CREATE POLICY "Tenant service role can insert feature flag overrides" ON public.feature_flag_overrides
  FOR INSERT TO service_role
  WITH CHECK (restaurant_id = public.require_restaurant_context());
CREATE POLICY "Tenant service role can update feature flag overrides" ON public.feature_flag_overrides
  FOR UPDATE TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());
CREATE POLICY "Tenant service role can delete feature flag overrides" ON public.feature_flag_overrides
  FOR DELETE TO service_role
  USING (restaurant_id = public.require_restaurant_context());
