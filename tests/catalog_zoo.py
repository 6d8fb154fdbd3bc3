"""The catalog zoo: what a platform's schema hangs on ``allocations`` by OID or row type, and pg_dump as the judge.

Each feature is built on the revision below the swap. The online method must
leave ``pg_dump --schema-only`` exactly as the locked method does (CARRIED), or
refuse before it builds anything, naming the object (REFUSED). The dump
excludes the swap's own schema and, while the window is open, the capture's
triggers on the live table: the machinery, not the platform's catalog.
"""

from __future__ import annotations

import os
import re
import subprocess

from sqlalchemy.engine import URL

from reserve.rollout.ephemeral import find_bindir
from reserve.schema.swap.dependents import OURS
from reserve.schema.swap.state import SCHEMA

# Roles are cluster-wide: created once, whichever test comes first.
ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zoo_reader') THEN CREATE ROLE zoo_reader NOLOGIN; END IF;
END $$;
"""
TRIGGER_FUNCTION = ("CREATE OR REPLACE FUNCTION public.zoo_touch() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$BEGIN RETURN NEW; END$$;")

# What the online method carries: name -> SQL run on a database below the swap.
CARRIED: dict[str, str] = {
    "view options": """
        CREATE VIEW public.zoo_invoker WITH (security_invoker = true, security_barrier = true)
          AS SELECT id, restaurant_id, "window" FROM public.allocations WITH LOCAL CHECK OPTION;
        COMMENT ON VIEW public.zoo_invoker IS 'read through RLS of the caller';
        GRANT SELECT ON public.zoo_invoker TO zoo_reader;""",
    "view over a view": """
        CREATE VIEW public.zoo_base AS SELECT id, resource_id FROM public.allocations WHERE NOT shadow;
        CREATE VIEW public.zoo_upper AS SELECT count(*) AS n FROM public.zoo_base;""",
    "publication column list and row filter": """
        CREATE PUBLICATION zoo_filtered FOR TABLE public.allocations (id, restaurant_id, "window")
          WHERE (NOT shadow) WITH (publish = 'insert');""",
    "publication of the whole table": "CREATE PUBLICATION zoo_whole FOR TABLE public.allocations;",
    "publication of the schema": "CREATE PUBLICATION zoo_schema FOR TABLES IN SCHEMA public;",
    "trigger states and comments": f"""
        {TRIGGER_FUNCTION}
        CREATE TRIGGER zoo_disabled BEFORE UPDATE ON public.allocations FOR EACH ROW EXECUTE FUNCTION public.zoo_touch();
        CREATE TRIGGER zoo_always BEFORE INSERT ON public.allocations FOR EACH ROW EXECUTE FUNCTION public.zoo_touch();
        CREATE TRIGGER zoo_replica AFTER DELETE ON public.allocations FOR EACH ROW EXECUTE FUNCTION public.zoo_touch();
        ALTER TABLE public.allocations DISABLE TRIGGER zoo_disabled;
        ALTER TABLE public.allocations ENABLE ALWAYS TRIGGER zoo_always;
        ALTER TABLE public.allocations ENABLE REPLICA TRIGGER zoo_replica;
        COMMENT ON TRIGGER zoo_always ON public.allocations IS 'fires in replica sessions too';""",
    "column settings": """
        ALTER TABLE public.allocations ALTER COLUMN created_by SET STATISTICS 500,
          ALTER COLUMN resource_type SET (n_distinct = 2), ALTER COLUMN resource_type SET STORAGE EXTERNAL,
          ALTER COLUMN resource_type SET COMPRESSION lz4;
        COMMENT ON COLUMN public.allocations.created_by IS 'the staff member';""",
    "table and toast options, cluster index": """
        ALTER TABLE public.allocations SET (fillfactor = 90, toast.autovacuum_enabled = false);
        ALTER TABLE public.allocations CLUSTER ON allocations_pkey;
        COMMENT ON TABLE public.allocations IS 'who holds which table when';""",
    "comments on indexes, constraints and policies": """
        CREATE INDEX zoo_created_at_idx ON public.allocations (created_at) WITH (fillfactor = 80);
        COMMENT ON INDEX public.zoo_created_at_idx IS 'for the reports';
        COMMENT ON INDEX public.allocations_pkey IS 'the id';
        COMMENT ON CONSTRAINT allocations_pkey ON public.allocations IS 'one row per allocation';
        COMMENT ON CONSTRAINT allocations_resource_type_check ON public.allocations IS 'two kinds';
        COMMENT ON CONSTRAINT allocations_restaurant_id_fkey ON public.allocations IS 'the tenant';
        COMMENT ON POLICY "Tenant service role can manage allocations" ON public.allocations IS 'tenant scoped';""",
    "not valid constraints kept not valid": """
        INSERT INTO public.restaurants (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'Zoo');
        INSERT INTO public.allocations (restaurant_id, resource_type, resource_id, "window", created_at, created_by)
          VALUES ('00000000-0000-0000-0000-00000000000a', 'table', gen_random_uuid(),
                  tstzrange('2001-01-01', '2001-01-02'), '2001-01-01', gen_random_uuid());
        ALTER TABLE public.allocations ADD CONSTRAINT zoo_recent CHECK (created_at > '2010-01-01') NOT VALID;
        ALTER TABLE public.allocations ADD CONSTRAINT zoo_creator_fkey FOREIGN KEY (created_by)
          REFERENCES public.restaurants (id) NOT VALID;""",
    "foreign keys of another table: not valid, commented": """
        CREATE TABLE public.zoo_refs (id int PRIMARY KEY, allocation_id uuid);
        ALTER TABLE public.zoo_refs ADD CONSTRAINT zoo_refs_allocation_fkey FOREIGN KEY (allocation_id)
          REFERENCES public.allocations (id) ON DELETE SET NULL NOT VALID;
        COMMENT ON CONSTRAINT zoo_refs_allocation_fkey ON public.zoo_refs IS 'legacy rows unchecked';
        CREATE TABLE public.zoo_valid_refs (id int PRIMARY KEY,
          allocation_id uuid CONSTRAINT zoo_valid_refs_fkey REFERENCES public.allocations (id) DEFERRABLE);
        COMMENT ON CONSTRAINT zoo_valid_refs_fkey ON public.zoo_valid_refs IS 'checked';""",
    "a policy of another table reading allocations": """
        CREATE TABLE public.zoo_notes (id int PRIMARY KEY, allocation_id uuid);
        ALTER TABLE public.zoo_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY zoo_notes_visible ON public.zoo_notes FOR SELECT TO zoo_reader
          USING (EXISTS (SELECT 1 FROM public.allocations a WHERE a.id = zoo_notes.allocation_id));
        COMMENT ON POLICY zoo_notes_visible ON public.zoo_notes IS 'as its allocation';""",
    "column privileges and replica identity": """
        GRANT SELECT (id, "window"), UPDATE (created_by) ON public.allocations TO zoo_reader;
        GRANT SELECT ON public.allocations TO zoo_reader WITH GRANT OPTION;
        ALTER TABLE public.allocations REPLICA IDENTITY FULL;""",
}
# What makes the online method refuse: name -> (SQL, what the one-line refusal names).
REFUSED: dict[str, tuple[str, str]] = {
    "materialized view": ("CREATE MATERIALIZED VIEW public.zoo_busy AS SELECT resource_id FROM public.allocations;",
                          "materialized view public.zoo_busy"),
    "inheritance child": ("CREATE TABLE public.zoo_archived () INHERITS (public.allocations);",
                          "table public.zoo_archived"),
    "inheritance parent": ("CREATE TABLE public.zoo_resources (resource_id uuid);"
                           "ALTER TABLE public.allocations INHERIT public.zoo_resources;",
                           "table public.zoo_resources"),
    "column typed allocations": ("CREATE TABLE public.zoo_snapshots (id int, taken public.allocations);",
                                 "column taken of table public.zoo_snapshots"),
    "function taking the row type": (
        "CREATE FUNCTION public.zoo_label(a public.allocations) RETURNS text LANGUAGE sql "
        "AS 'SELECT a.resource_type';", "function public.zoo_label(public.allocations)"),
    "function returning the row type": (
        "CREATE FUNCTION public.zoo_latest() RETURNS SETOF public.allocations LANGUAGE sql "
        "AS 'SELECT * FROM public.allocations ORDER BY created_at DESC LIMIT 1';", "function public.zoo_latest()"),
    "publication for all tables": ("CREATE PUBLICATION zoo_everything FOR ALL TABLES;",
                                   "publication zoo_everything (FOR ALL TABLES)"),
    "sequence owned by a column": ("CREATE SEQUENCE public.zoo_numbers OWNED BY public.allocations.created_by;",
                                   "sequence public.zoo_numbers"),
    "rule on allocations": ("CREATE RULE zoo_no_delete AS ON DELETE TO public.allocations WHERE OLD.shadow "
                            "DO INSTEAD NOTHING;", "rule zoo_no_delete on table public.allocations"),
    "rule of another table": ("CREATE TABLE public.zoo_inbox (id uuid);"
                              "CREATE RULE zoo_forward AS ON INSERT TO public.zoo_inbox DO ALSO "
                              "DELETE FROM public.allocations WHERE id = NEW.id;",
                              "rule zoo_forward on table public.zoo_inbox"),
    "function with an SQL-standard body": (
        "CREATE FUNCTION public.zoo_count() RETURNS bigint LANGUAGE sql BEGIN ATOMIC "
        "SELECT count(*) FROM public.allocations; END;", "function public.zoo_count()"),
    "foreign key to itself": ("ALTER TABLE public.allocations ADD COLUMN parent_id uuid "
                              "CONSTRAINT zoo_parent_fkey REFERENCES public.allocations (id);",
                              "foreign key zoo_parent_fkey of public.allocations"),
    "identity column": ("ALTER TABLE public.allocations ADD COLUMN number bigint GENERATED ALWAYS AS IDENTITY;",
                        "column number of public.allocations"),
    "extended statistics": ("CREATE STATISTICS public.zoo_stats (dependencies) ON restaurant_id, resource_id "
                            "FROM public.allocations;", "statistics object public.zoo_stats"),
}

_BLOCK = re.compile(r"^--\n-- Name: ", re.M)
# pg_dump's per-run random key (\restrict) and its version differ between any two dumps.
_VARYING = ("\\restrict ", "\\unrestrict ", "-- Dumped ")


def _machinery(block: str) -> bool:
    """A block of the capture's triggers: the machinery the window puts on the live table."""
    first = block.split("\n", 1)[0]
    return "Type: TRIGGER;" in first and any(f" {trigger};" in first for trigger in OURS)


def schema_dump(url: URL) -> str:
    """``pg_dump --schema-only`` of the database, without the swap's machinery (its schema, its triggers) and
    without what differs between any two runs."""
    result = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--schema-only", f"--exclude-schema={SCHEMA}", "-h", url.host or "",
         "-p", str(url.port), "-U", url.username or "", "-d", url.database or ""],
        env={**os.environ, "PGPASSWORD": url.password or ""}, capture_output=True, text=True, check=True)
    text = "".join(line for line in result.stdout.splitlines(True) if not line.startswith(_VARYING))
    head, *blocks = _BLOCK.split(text)
    return head + "".join(f"--\n-- Name: {block}" for block in blocks if not _machinery(block))
