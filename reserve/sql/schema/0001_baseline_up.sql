-- 0001_baseline: the schema as it stood before the capacity-overlap change.
-- Tables, keys, the old allocation guard, RLS and grants. Functions are loaded
-- from their own versioned files after this script.

-- Extensions: reuse an installed one wherever it lives; otherwise install it
-- into schema "extensions" (the Supabase layout) and mark it as ours so the
-- downgrade removes only what this revision added.
DO $ext$
DECLARE
  ext text;
BEGIN
  FOREACH ext IN ARRAY ARRAY['btree_gist', 'pgcrypto'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = ext) THEN
      IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'extensions') THEN
        CREATE SCHEMA extensions;
        COMMENT ON SCHEMA extensions IS 'created by reserve-migrations 0001_baseline';
      END IF;
      EXECUTE format('CREATE EXTENSION %I WITH SCHEMA extensions', ext);
      EXECUTE format('COMMENT ON EXTENSION %I IS %L', ext, 'installed by reserve-migrations 0001_baseline');
    END IF;
  END LOOP;
END
$ext$;

-- Cluster roles of the platform: created when missing, never dropped.
DO $roles$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
    END IF;
  END LOOP;
END
$roles$;

CREATE TYPE public.booking_status AS ENUM (
  'pending', 'pending_allocation', 'confirmed', 'checked_in', 'completed', 'cancelled', 'no_show'
);
CREATE TYPE public.table_status AS ENUM ('available', 'reserved', 'occupied', 'out_of_service');
CREATE TYPE public.table_mobility AS ENUM ('fixed', 'movable');

CREATE TABLE public.restaurants (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  timezone text NOT NULL DEFAULT 'UTC',
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.zones (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX zones_restaurant_id_idx ON public.zones (restaurant_id);

CREATE TABLE public.table_inventory (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  zone_id uuid REFERENCES public.zones(id) ON DELETE SET NULL,
  table_number text NOT NULL,
  capacity integer NOT NULL CONSTRAINT table_inventory_capacity_positive CHECK (capacity > 0),
  active boolean NOT NULL DEFAULT true,
  status public.table_status NOT NULL DEFAULT 'available',
  mobility public.table_mobility NOT NULL DEFAULT 'fixed',
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT table_inventory_restaurant_number_key UNIQUE (restaurant_id, table_number)
);
CREATE INDEX table_inventory_zone_id_idx ON public.table_inventory (zone_id);

CREATE TABLE public.table_adjacencies (
  table_a uuid NOT NULL REFERENCES public.table_inventory(id) ON DELETE CASCADE,
  table_b uuid NOT NULL REFERENCES public.table_inventory(id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT table_adjacencies_pkey PRIMARY KEY (table_a, table_b),
  CONSTRAINT table_adjacencies_no_self_loop CHECK (table_a <> table_b)
);
-- Edges are undirected: (a,b) and (b,a) are the same edge, stored once.
CREATE UNIQUE INDEX table_adjacencies_undirected_key
  ON public.table_adjacencies (LEAST(table_a, table_b), GREATEST(table_a, table_b));
CREATE INDEX table_adjacencies_table_b_idx ON public.table_adjacencies (table_b);

CREATE TABLE public.bookings (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  status public.booking_status NOT NULL DEFAULT 'pending',
  party_size integer NOT NULL DEFAULT 2 CONSTRAINT bookings_party_size_positive CHECK (party_size > 0),
  start_at timestamptz,
  end_at timestamptz,
  assigned_zone_id uuid REFERENCES public.zones(id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT bookings_window_ordered CHECK (start_at IS NULL OR end_at IS NULL OR start_at < end_at)
);
CREATE INDEX bookings_restaurant_id_idx ON public.bookings (restaurant_id);

CREATE TABLE public.booking_state_history (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  from_status public.booking_status,
  to_status public.booking_status NOT NULL,
  changed_by uuid,
  changed_at timestamptz NOT NULL DEFAULT now(),
  reason text,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX booking_state_history_booking_id_idx ON public.booking_state_history (booking_id);

CREATE TABLE public.allocations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  booking_id uuid REFERENCES public.bookings(id) ON DELETE CASCADE,
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  resource_type text NOT NULL CONSTRAINT allocations_resource_type_check
    CHECK (resource_type IN ('table', 'merge_group')),
  resource_id uuid NOT NULL,
  "window" tstzrange NOT NULL,
  shadow boolean NOT NULL DEFAULT false,
  is_maintenance boolean NOT NULL DEFAULT false,
  created_by uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT allocations_booking_resource_key UNIQUE (booking_id, resource_type, resource_id),
  -- The old guard: one resource, one booking at a time, across all tenants,
  -- checked only at commit.
  CONSTRAINT allocations_resource_window_excl EXCLUDE USING gist (
    resource_type WITH =, resource_id WITH =, "window" WITH &&
  ) WHERE (NOT shadow) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX allocations_resource_window_idx ON public.allocations USING gist (resource_id, "window");

CREATE TABLE public.table_holds (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  restaurant_id uuid NOT NULL REFERENCES public.restaurants(id) ON DELETE CASCADE,
  zone_id uuid REFERENCES public.zones(id) ON DELETE SET NULL,
  booking_id uuid REFERENCES public.bookings(id) ON DELETE CASCADE,
  start_at timestamptz NOT NULL,
  end_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_by uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT table_holds_window_ordered CHECK (start_at < end_at)
);
CREATE INDEX table_holds_restaurant_id_idx ON public.table_holds (restaurant_id);
CREATE INDEX table_holds_booking_id_idx ON public.table_holds (booking_id);

CREATE TABLE public.table_hold_members (
  hold_id uuid NOT NULL REFERENCES public.table_holds(id) ON DELETE CASCADE,
  table_id uuid NOT NULL REFERENCES public.table_inventory(id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT table_hold_members_pkey PRIMARY KEY (hold_id, table_id)
);
CREATE INDEX table_hold_members_table_id_idx ON public.table_hold_members (table_id);

CREATE TABLE public.booking_table_assignments (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  table_id uuid NOT NULL REFERENCES public.table_inventory(id) ON DELETE CASCADE,
  allocation_id uuid REFERENCES public.allocations(id) ON DELETE SET NULL,
  merge_group_id uuid,
  idempotency_key text,
  start_at timestamptz,
  end_at timestamptz,
  assigned_by uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT booking_table_assignments_booking_table_key UNIQUE (booking_id, table_id)
);
CREATE INDEX booking_table_assignments_table_id_idx ON public.booking_table_assignments (table_id);
CREATE INDEX booking_table_assignments_allocation_id_idx ON public.booking_table_assignments (allocation_id);

CREATE TABLE public.booking_assignment_idempotency (
  booking_id uuid NOT NULL REFERENCES public.bookings(id) ON DELETE CASCADE,
  idempotency_key text NOT NULL,
  table_set_hash text NOT NULL,
  table_ids uuid[] NOT NULL,
  assignment_window tstzrange NOT NULL,
  merge_group_allocation_id uuid REFERENCES public.allocations(id) ON DELETE SET NULL,
  payload_checksum text,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT booking_assignment_idempotency_pkey PRIMARY KEY (booking_id, idempotency_key)
);

CREATE TABLE public.capacity_outbox (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  event_type text NOT NULL,
  dedupe_key text NOT NULL CONSTRAINT capacity_outbox_dedupe_key_key UNIQUE,
  restaurant_id uuid REFERENCES public.restaurants(id) ON DELETE CASCADE,
  booking_id uuid REFERENCES public.bookings(id) ON DELETE CASCADE,
  idempotency_key text,
  payload jsonb NOT NULL,
  status text NOT NULL DEFAULT 'pending',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX capacity_outbox_restaurant_id_idx ON public.capacity_outbox (restaurant_id);
CREATE INDEX capacity_outbox_booking_id_idx ON public.capacity_outbox (booking_id);

CREATE TABLE public.feature_flag_overrides (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  restaurant_id uuid REFERENCES public.restaurants(id) ON DELETE CASCADE,
  flag_key text NOT NULL,
  flag_value text NOT NULL,
  enabled boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- One row per (venue, flag); NULL (all venues) counts as one venue.
CREATE UNIQUE INDEX feature_flag_overrides_scope_key
  ON public.feature_flag_overrides (COALESCE(restaurant_id, '00000000-0000-0000-0000-000000000000'::uuid), flag_key);
