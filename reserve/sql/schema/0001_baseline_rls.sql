-- 0001_baseline: tenant isolation. service_role may touch only the rows of the
-- restaurant named by require_restaurant_context(); anon and authenticated get
-- nothing. Child tables without restaurant_id inherit the tenant of their parent;
-- a row that names tables must name tables of that same tenant only (else one
-- venue could, say, hold or link another venue's tables).

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON
  public.restaurants, public.zones, public.table_inventory, public.table_adjacencies,
  public.bookings, public.booking_state_history, public.allocations, public.table_holds,
  public.table_hold_members, public.booking_table_assignments,
  public.booking_assignment_idempotency, public.capacity_outbox, public.feature_flag_overrides
TO service_role;

ALTER TABLE public.restaurants ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage restaurants" ON public.restaurants
  FOR ALL TO service_role
  USING (id = public.require_restaurant_context())
  WITH CHECK (id = public.require_restaurant_context());

ALTER TABLE public.zones ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage zones" ON public.zones
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

ALTER TABLE public.table_inventory ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage table inventory" ON public.table_inventory
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

ALTER TABLE public.table_adjacencies ENABLE ROW LEVEL SECURITY;
-- An edge is undirected: both of its tables must be the tenant's.
CREATE POLICY "Tenant service role can manage table adjacencies" ON public.table_adjacencies
  FOR ALL TO service_role
  USING (EXISTS (SELECT 1 FROM public.table_inventory t
                 WHERE t.id = table_a AND t.restaurant_id = public.require_restaurant_context())
     AND EXISTS (SELECT 1 FROM public.table_inventory t
                 WHERE t.id = table_b AND t.restaurant_id = public.require_restaurant_context()))
  WITH CHECK (EXISTS (SELECT 1 FROM public.table_inventory t
                      WHERE t.id = table_a AND t.restaurant_id = public.require_restaurant_context())
          AND EXISTS (SELECT 1 FROM public.table_inventory t
                      WHERE t.id = table_b AND t.restaurant_id = public.require_restaurant_context()));

ALTER TABLE public.bookings ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage bookings" ON public.bookings
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

ALTER TABLE public.booking_state_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage booking state history" ON public.booking_state_history
  FOR ALL TO service_role
  USING (EXISTS (SELECT 1 FROM public.bookings b
                 WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context()))
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context()));

ALTER TABLE public.allocations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage allocations" ON public.allocations
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

ALTER TABLE public.table_holds ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage table holds" ON public.table_holds
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

ALTER TABLE public.table_hold_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage table hold members" ON public.table_hold_members
  FOR ALL TO service_role
  USING (EXISTS (SELECT 1 FROM public.table_holds h
                 WHERE h.id = hold_id AND h.restaurant_id = public.require_restaurant_context())
     AND EXISTS (SELECT 1 FROM public.table_inventory t
                 WHERE t.id = table_id AND t.restaurant_id = public.require_restaurant_context()))
  WITH CHECK (EXISTS (SELECT 1 FROM public.table_holds h
                      WHERE h.id = hold_id AND h.restaurant_id = public.require_restaurant_context())
          AND EXISTS (SELECT 1 FROM public.table_inventory t
                      WHERE t.id = table_id AND t.restaurant_id = public.require_restaurant_context()));

ALTER TABLE public.booking_table_assignments ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage booking table assignments" ON public.booking_table_assignments
  FOR ALL TO service_role
  USING (EXISTS (SELECT 1 FROM public.bookings b
                 WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context())
     AND EXISTS (SELECT 1 FROM public.table_inventory t
                 WHERE t.id = table_id AND t.restaurant_id = public.require_restaurant_context()))
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context())
          AND EXISTS (SELECT 1 FROM public.table_inventory t
                      WHERE t.id = table_id AND t.restaurant_id = public.require_restaurant_context()));

ALTER TABLE public.booking_assignment_idempotency ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage booking assignment idempotency" ON public.booking_assignment_idempotency
  FOR ALL TO service_role
  USING (EXISTS (SELECT 1 FROM public.bookings b
                 WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context()))
  WITH CHECK (EXISTS (SELECT 1 FROM public.bookings b
                      WHERE b.id = booking_id AND b.restaurant_id = public.require_restaurant_context()));

ALTER TABLE public.capacity_outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage capacity outbox" ON public.capacity_outbox
  FOR ALL TO service_role
  USING (restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());

-- Global overrides (restaurant_id NULL) are readable by every venue, writable by none.
ALTER TABLE public.feature_flag_overrides ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Tenant service role can manage feature flag overrides" ON public.feature_flag_overrides
  FOR ALL TO service_role
  USING (restaurant_id IS NULL OR restaurant_id = public.require_restaurant_context())
  WITH CHECK (restaurant_id = public.require_restaurant_context());
