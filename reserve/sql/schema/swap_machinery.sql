-- The online guard swap's machinery (reserve.schema.swap): a schema that grants nothing to
-- anyone, holding the shadow copy of allocations (created next, by reserve.schema.swap.standby),
-- what the swap has done so far, the change log the capture appends to and the replayer consumes,
-- and the rows the shadow could not take. Dropped whole when the swap is finished or aborted.
CREATE SCHEMA reserve_swap;
REVOKE ALL ON SCHEMA reserve_swap FROM PUBLIC;
COMMENT ON SCHEMA reserve_swap IS 'reserve-migrations: the online swap of the allocations guard (shadow table and change log)';

CREATE TABLE reserve_swap.state (
  singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT state_one_row CHECK (singleton),
  -- What the next exchange does: 'upgrade' installs allocations_no_overlap, 'downgrade' the old guard.
  direction text NOT NULL CONSTRAINT state_direction_check CHECK (direction IN ('upgrade', 'downgrade')),
  standby_guard text NOT NULL,
  -- What each phase means, and who moves it where: reserve.schema.swap.state.PHASES and TRANSITIONS.
  -- building: shadow created, capture on, backfill running; backfilled: in step, ready to exchange;
  -- swapped: exchanged, foreign keys being validated; window: after an upgrade, the previous table
  -- kept in step so that the rollback is an exchange back; detached: the window closed, the previous
  -- table out of step, to be dropped; retired: after a downgrade, the table that left, to be dropped
  -- (both: emptied first, then dropped when its foreign keys' brief ACCESS EXCLUSIVE on bookings and
  -- restaurants is granted).
  phase text NOT NULL CONSTRAINT state_phase_check
    CHECK (phase IN ('building', 'backfilled', 'swapped', 'window', 'detached', 'retired')),
  -- The backfill copies pages [0, backfill_end_page) of allocations' file source_filenode, in batches;
  -- backfill_next_page is where the next batch starts (NULL end page: not started).
  backfill_next_page bigint NOT NULL DEFAULT 0,
  backfill_end_page bigint,
  source_filenode oid,
  rows_copied bigint NOT NULL DEFAULT 0,
  -- When the bulk copy ended (the shadow's guard is built after it, from the filled table).
  copied_at timestamptz,
  -- The transaction that last filled the shadow in bulk (its guard's build; for the previous table in the
  -- window, the exchange that made it so): a snapshot older than it would see the shadow empty or partial
  -- after the next exchange, which waits for every such snapshot to end.
  filled_xid xid8,
  started_at timestamptz NOT NULL DEFAULT now(),
  backfilled_at timestamptz,
  swapped_at timestamptz,
  window_opened_at timestamptz,
  retired_at timestamptz
);

-- The change log: one row per allocation id written since the capture began (NULL: a TRUNCATE),
-- appended in the writer's transaction, never updated, deleted by the replayer that consumed it.
-- Logged (a crash must not lose it); no index (the replayer takes rows in any order: it makes each
-- id equal to the live table's committed version, so order does not matter).
CREATE TABLE reserve_swap.log (
  seq bigint GENERATED ALWAYS AS IDENTITY,
  allocation_id uuid,
  logged_at timestamptz NOT NULL DEFAULT now()
);

-- Allocations the shadow could not take (its guard refused them, or the copy failed): the
-- shadow is not in step while any is here; the exchange refuses, listing them.
CREATE TABLE reserve_swap.conflicts (
  allocation_id uuid PRIMARY KEY,
  sqlstate text NOT NULL,
  detail text NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now()
);
