"""A realistic, synthetic booking dataset, shared by the rehearsal and the benchmarks.

Shape (the benchmark's reference at 1M rows): restaurants x 20 tables x 50
booking windows per table, one booking per window; 10% of the allocation rows
are shadow rows (what-if allocations the guards ignore, overlapping real
ones) and 2% of the windows are maintenance blocks without a booking. Every
table is allocated at most once per window, so both the old and the new guard
hold. Names are synthetic ("Restaurant 17"), ids are random: no personal data.
Everything is generated inside PostgreSQL with set-based INSERTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

TABLES_PER_RESTAURANT = 20
WINDOWS_PER_TABLE = 50
SHADOW_FRACTION = 0.10
MAINTENANCE_EVERY = 50  # one window in 50 is a maintenance block (2%)


@dataclass(frozen=True)
class Shape:
    restaurants: int
    tables_per_restaurant: int = TABLES_PER_RESTAURANT
    windows_per_table: int = WINDOWS_PER_TABLE

    @classmethod
    def for_rows(cls, rows: int) -> Shape:
        """The shape whose allocations table has about ``rows`` rows (shadow rows included)."""
        if rows < 1:
            raise ValueError("rows must be a positive number")
        per_restaurant = TABLES_PER_RESTAURANT * WINDOWS_PER_TABLE / (1 - SHADOW_FRACTION)
        return cls(restaurants=max(1, round(rows / per_restaurant)))

    @property
    def live_allocations(self) -> int:
        return self.restaurants * self.tables_per_restaurant * self.windows_per_table


def generate(conn: psycopg.Connection[Any], shape: Shape) -> dict[str, int]:
    """Fill an empty schema (at any revision) with ``shape``; returns row counts per table."""
    params = {
        "restaurants": shape.restaurants,
        "tables": shape.tables_per_restaurant,
        "windows": shape.windows_per_table,
        "maintenance_every": MAINTENANCE_EVERY,
    }
    statements = [
        """INSERT INTO restaurants (name, timezone)
           SELECT 'Restaurant ' || r, 'Europe/London' FROM generate_series(1, %(restaurants)s) AS r""",
        """INSERT INTO zones (restaurant_id, name)
           SELECT id, zone FROM restaurants, (VALUES ('Main'), ('Terrace')) AS z(zone)""",
        """INSERT INTO table_inventory (restaurant_id, zone_id, table_number, capacity, mobility)
           SELECT z.restaurant_id, z.id, z.name || '-' || t, 2 + (t %% 3) * 2,
                  (CASE WHEN t %% 4 = 0 THEN 'fixed' ELSE 'movable' END)::table_mobility
           FROM zones z, generate_series(1, %(tables)s / 2) AS t""",
        """INSERT INTO table_adjacencies (table_a, table_b)
           SELECT id, next_id FROM (
             SELECT id, lead(id) OVER (PARTITION BY zone_id ORDER BY table_number) AS next_id FROM table_inventory
           ) chain WHERE next_id IS NOT NULL""",
        # One booking per (table, window): day w at 18:00 UTC for two hours.
        """CREATE TEMP TABLE generated_slots ON COMMIT DROP AS
           SELECT t.id AS table_id, t.restaurant_id, t.zone_id, w,
                  tstzrange(date_trunc('day', now()) + make_interval(days => w, hours => 18),
                            date_trunc('day', now()) + make_interval(days => w, hours => 20), '[)') AS slot,
                  gen_random_uuid() AS booking_id
           FROM table_inventory t, generate_series(1, %(windows)s) AS w""",
        """INSERT INTO bookings (id, restaurant_id, status, party_size, start_at, end_at, assigned_zone_id)
           SELECT booking_id, restaurant_id, 'confirmed', 2, lower(slot), upper(slot), zone_id
           FROM generated_slots WHERE w %% %(maintenance_every)s <> 0""",
        """INSERT INTO allocations (booking_id, restaurant_id, resource_type, resource_id, "window", is_maintenance)
           SELECT CASE WHEN w %% %(maintenance_every)s <> 0 THEN booking_id END, restaurant_id, 'table', table_id,
                  slot, w %% %(maintenance_every)s = 0
           FROM generated_slots""",
        # Shadow rows: what-if allocations that overlap real ones; the guards ignore them.
        """INSERT INTO allocations (restaurant_id, resource_type, resource_id, "window", shadow)
           SELECT restaurant_id, 'table', table_id, tstzrange(lower(slot) + interval '1 hour', upper(slot) + interval '1 hour'),
                  true
           FROM generated_slots WHERE (w + hashtext(table_id::text)) %% 9 = 0""",
        "ANALYZE",
    ]
    with conn.transaction():
        for statement in statements:
            conn.execute(statement, params)
    return row_counts(conn)


COUNTED_TABLES = ("restaurants", "zones", "table_inventory", "bookings", "allocations", "table_holds",
                  "booking_confirmation_results")


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row counts of the project's main tables (those that exist at this revision)."""
    counts = {}
    for table in COUNTED_TABLES:
        if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0]:
            counts[table] = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()[0]
    return counts
