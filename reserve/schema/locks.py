"""Table locks: the eight modes and what conflicts with what, the locks each revision declares, who holds them.

Every revision declares here, in ``DECLARED``, the strongest lock it takes on
each table that exists before it runs, per direction. The revisions take
exactly these locks first, through one mechanism (``reserve.schema.migration.take_locks``:
a short lock_timeout per attempt and bounded retries), so that no later
statement of the revision waits in a lock queue; ``reserve preflight`` reads the
same table to name whoever would make a step wait; and the lock trace
(``reserve.schema.locktrace``) proves, statement by statement, that no revision takes
a lock stronger than it declares or on a table it does not declare.

Tables a revision creates are not declared: nobody else can see them before
the revision commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from reserve.schema import revisions
from reserve.schema.options import DEFAULT_SWAP_METHOD
from reserve.schema.swap.state import CONFLICTS as _CONFLICTS_TABLE
from reserve.schema.swap.state import KEYS_TO_VALIDATE as _KEYS_TO_VALIDATE
from reserve.schema.swap.state import LIVE as _LIVE
from reserve.schema.swap.state import LOG as _LOG
from reserve.schema.swap.state import SHADOW as _SHADOW
from reserve.schema.swap.state import STATE as _STATE

# The session-level pg_advisory_lock every migration run holds (alembic/env.py). Arbitrary, fixed forever.
MIGRATION_LOCK_KEY = 7_265_736_572_766_501

# A session waiting for MIGRATION_LOCK_KEY: a second run queued in env.py. Its statement's snapshot is gone
# once the lock is granted, so it is not an old snapshot the exchange must wait for.
WAITING_FOR_MIGRATION_LOCK_SQL = (
    "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = {pid} AND l.locktype = 'advisory' AND NOT l.granted "
    f"AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = {MIGRATION_LOCK_KEY})"
)

# pg_locks spelling -> SQL spelling, weakest first.
MODES: dict[str, str] = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}
_SQL = {sql: name for name, sql in MODES.items()}

# PostgreSQL's conflict table ("Conflicting Lock Modes" in the manual), by SQL spelling.
CONFLICTS: dict[str, frozenset[str]] = {
    "ACCESS SHARE": frozenset({"ACCESS EXCLUSIVE"}),
    "ROW SHARE": frozenset({"EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "ROW EXCLUSIVE": frozenset({"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "SHARE UPDATE EXCLUSIVE": frozenset({"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                                         "ACCESS EXCLUSIVE"}),
    "SHARE": frozenset({"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                        "ACCESS EXCLUSIVE"}),
    "SHARE ROW EXCLUSIVE": frozenset({"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                                      "EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "EXCLUSIVE": frozenset({"ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                            "EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "ACCESS EXCLUSIVE": frozenset(MODES.values()),
}


def sql_mode(mode: str) -> str:
    """'AccessExclusiveLock' or 'ACCESS EXCLUSIVE' -> 'ACCESS EXCLUSIVE'; ValueError for anything else."""
    if mode in _SQL:
        return mode
    if mode in MODES:
        return MODES[mode]
    raise ValueError(f"not a table lock mode: {mode!r}")


def conflicts(a: str, b: str) -> bool:
    """Would a lock in mode ``a`` wait for one in mode ``b`` (and the other way round)?"""
    return sql_mode(b) in CONFLICTS[sql_mode(a)]


def covers(declared: str, taken: str) -> bool:
    """True when ``taken`` blocks nobody that ``declared`` does not block already."""
    return CONFLICTS[sql_mode(taken)] <= CONFLICTS[sql_mode(declared)]


def strongest(modes: Iterable[str]) -> str | None:
    """The mode that blocks the most, of ``modes`` (by the conflict table; ties by manual order)."""
    order = list(MODES.values())
    found = sorted({sql_mode(m) for m in modes}, key=lambda m: (len(CONFLICTS[m]), order.index(m)))
    return found[-1] if found else None


# ---------------------------------------------------------------- what each revision declares


@dataclass(frozen=True)
class StepLocks:
    """The locks one direction of one revision takes on tables that exist before it: table -> SQL mode."""

    tables: Mapping[str, str]

    def groups(self) -> list[tuple[str, list[str]]]:
        """(mode, tables) in the order they are taken: strongest mode first, tables by name within a mode,
        allocations after the others, and only then the swap's own tables. A lock statement holds what it has
        while it waits for the next table, so tables go in the order the application reaches them: holding
        allocations (which every booking reads and writes, before the tables that point at it) while waiting
        for booking_table_assignments is a deadlock with every confirmation in between; holding the change log
        while waiting for allocations is a deadlock with every writer, whose capture trigger appends to the log
        while its statement holds allocations. Either is broken only after deadlock_timeout, with every booking
        queued behind it meanwhile."""
        order = list(MODES.values())
        by_mode: dict[str, list[str]] = {}
        for table, mode in self.tables.items():
            by_mode.setdefault(mode, []).append(table)
        return [(mode, sorted(by_mode[mode], key=lambda t: (reached_after(t), t)))
                for mode in sorted(by_mode, key=order.index, reverse=True)]


AE, SRE, SUE = "ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE"
LAST = "public.allocations"  # taken after every other application table of its mode (StepLocks.groups)
SWAP_SCHEMA = "reserve_swap"  # the online swap's tables, written from allocations' triggers: taken after it


def reached_after(table: str) -> int:
    """0 for an application table, 1 for allocations, 2 for the swap's own tables (StepLocks.groups' order)."""
    return 2 if table.startswith(f"{SWAP_SCHEMA}.") else int(table == LAST)
BASELINE_TABLES = (
    "public.restaurants", "public.zones", "public.table_inventory", "public.table_adjacencies", "public.bookings",
    "public.booking_state_history", "public.allocations", "public.table_holds", "public.table_hold_members",
    "public.booking_table_assignments", "public.booking_assignment_idempotency", "public.capacity_outbox",
    "public.feature_flag_overrides",
)
# The ten tables whose policies 0003b rewrites.
TENANT_POLICY_TABLES = (
    "public.allocations", "public.booking_assignment_idempotency", "public.booking_confirmation_results",
    "public.booking_table_assignments", "public.bookings", "public.capacity_outbox",
    "public.confirmation_cache_events", "public.feature_flag_overrides", "public.table_holds",
    "public.table_inventory",
)
ARCHIVED = ("reserve_archive.booking_confirmation_results", "reserve_archive.confirmation_cache_events")

# revision -> direction -> the strongest lock per existing table. Why each one:
DECLARED: dict[str, dict[str, StepLocks]] = {
    "0001_baseline": {
        # Creates every table; nothing existed before.
        "upgrade": StepLocks({}),
        # Drops every table (and the archive, when a later downgrade left one).
        "downgrade": StepLocks({**dict.fromkeys(BASELINE_TABLES, AE), **dict.fromkeys(ARCHIVED, AE)}),
    },
    "0002_confirmation_results": {
        # The new table's foreign keys add their triggers to bookings and restaurants; an archived table
        # is moved back from reserve_archive.
        "upgrade": StepLocks({"public.bookings": SRE, "public.restaurants": SRE, ARCHIVED[0]: AE}),
        # The table is moved to reserve_archive (or dropped, which removes the triggers of its keys).
        "downgrade": StepLocks({"public.booking_confirmation_results": AE, "public.bookings": AE,
                                "public.restaurants": AE}),
    },
    "0003_confirm_v12": {
        # CREATE OR REPLACE FUNCTION: no table lock.
        "upgrade": StepLocks({}),
        "downgrade": StepLocks({}),
    },
    "0003a_operations": {
        # ADD CONSTRAINT … CHECK … NOT VALID on feature_flag_overrides; the cache table's foreign keys.
        "upgrade": StepLocks({"public.feature_flag_overrides": AE, "public.bookings": SRE, "public.restaurants": SRE,
                              ARCHIVED[1]: AE}),
        "downgrade": StepLocks({"public.feature_flag_overrides": AE, "public.confirmation_cache_events": AE,
                                "public.bookings": AE, "public.restaurants": AE}),
    },
    "0003b_tenant_policies": {
        # DROP/CREATE POLICY on ten tables; the new WITH CHECKs read zones (ACCESS SHARE, as a query does).
        "upgrade": StepLocks({**dict.fromkeys(TENANT_POLICY_TABLES, AE), "public.zones": "ACCESS SHARE"}),
        "downgrade": StepLocks(dict.fromkeys(TENANT_POLICY_TABLES, AE)),
    },
    "0003c_maintenance_role": {
        # GRANT and REVOKE on a function: no table lock.
        "upgrade": StepLocks({}),
        "downgrade": StepLocks({}),
    },
    revisions.SWAP_REVISION: {
        # The locked method (-x swap_method=locked): drop one exclusion constraint and add the other, in place,
        # under the one lock (then, down, SHARE UPDATE EXCLUSIVE for the index build after the commit).
        "upgrade": StepLocks({"public.allocations": AE}),
        "downgrade": StepLocks({"public.allocations": AE}),
    },
}


SWAP_MACHINERY = (_SHADOW, _LOG, _CONFLICTS_TABLE, _STATE, _KEYS_TO_VALIDATE)
# The tables whose foreign keys and policies point at allocations at head (0003b), which the exchange re-points:
# what is declared when nobody says otherwise. The exchange itself and preflight read the live catalog instead
# (reserve.schema.swap.dependents.find(...).tables): a table that starts pointing at allocations is locked by
# the exchange and checked by preflight alike.
REPOINTED_AT_HEAD = ("public.booking_assignment_idempotency", "public.booking_table_assignments")


_PARENTS = ("public.bookings", "public.restaurants")  # what allocations' own foreign keys reference


def online_exchange(repointed: Iterable[str]) -> dict[str, str]:
    """What the online swap's exchange locks: allocations, the shadow and the change log, and every table whose
    foreign keys or policies it re-points (``repointed``, read from the catalog: dependents.find). ACCESS
    EXCLUSIVE for catalog work only (milliseconds); ROW EXCLUSIVE on the list of keys it leaves to validate."""
    return {_LIVE: AE, _SHADOW: AE, _LOG: AE, **dict.fromkeys(repointed, AE), _KEYS_TO_VALIDATE: "ROW EXCLUSIVE"}


def online_phase(step: str, *, repointed: Iterable[str] = REPOINTED_AT_HEAD, parents: Iterable[str] = _PARENTS,
                 captured: bool = True) -> dict[str, str]:
    """What each step of the online swap locks, declared once: taken by reserve.schema.swap (take()), and,
    through online_swap, checked by preflight and allowed by the lock trace.

    - build: the capture's triggers go on allocations (SHARE ROW EXCLUSIVE waits for the writers in flight);
    - key, guard: the shadow's bulk builds (ACCESS EXCLUSIVE on the shadow only);
    - foreign keys: the shadow's keys added NOT VALID (SHARE ROW EXCLUSIVE on it and on ``parents``);
    - validate shadow: one VALIDATE on the shadow (SHARE UPDATE EXCLUSIVE: nobody waits);
    - exchange: online_exchange;
    - validate repointed: each re-pointed key of ``repointed`` (SHARE UPDATE EXCLUSIVE; ROW SHARE on allocations),
      crossed off the list the exchange left;
    - detach: the capture off allocations (`reserve swap finish`, catalog work only);
    - empty: the table that left truncated under its own lock;
    - drop: the machinery dropped, its foreign keys' triggers off ``parents`` (and the capture off allocations
      when ``captured``)."""
    steps: dict[str, dict[str, str]] = {
        "build": {_LIVE: SRE},
        "key": {_SHADOW: AE},
        "guard": {_SHADOW: AE},
        "foreign keys": {_SHADOW: SRE, **dict.fromkeys(parents, SRE)},
        "validate shadow": {_SHADOW: SUE},
        "exchange": online_exchange(repointed),
        "validate repointed": {**dict.fromkeys(repointed, SUE), _LIVE: "ROW SHARE", _KEYS_TO_VALIDATE: "ROW EXCLUSIVE"},
        "detach": {_LIVE: AE, _SHADOW: AE, _LOG: AE},
        "empty": {_SHADOW: AE, _LOG: AE},
        "drop": {**({_LIVE: AE} if captured else {}), **dict.fromkeys(SWAP_MACHINERY, AE),
                 **dict.fromkeys(parents, AE)},
    }
    return steps[step]


ONLINE_STEPS = {"upgrade": ("build", "key", "guard", "foreign keys", "validate shadow", "exchange",
                            "validate repointed"),
                "downgrade": ("build", "key", "guard", "foreign keys", "validate shadow", "exchange",
                              "validate repointed", "empty", "drop")}


def online_swap(direction: str, repointed: Iterable[str] = REPOINTED_AT_HEAD) -> StepLocks:
    """The online method of the swap (-x swap_method=online) as one step for preflight and the lock trace: the
    strongest lock per table over every step ``direction`` runs (online_phase), plus the machinery's own tables
    when an earlier run left them and ACCESS SHARE on table_inventory (deparsing the re-pointed policies opens
    the tables they read, as a query does)."""
    tables: dict[str, str] = {**dict.fromkeys(SWAP_MACHINERY, AE), "public.table_inventory": "ACCESS SHARE"}
    for step in ONLINE_STEPS[direction]:
        for table, mode in online_phase(step, repointed=repointed).items():
            tables[table] = strongest([mode, tables[table]]) if table in tables else mode
    return StepLocks(tables)


SWAP_REVISION = revisions.SWAP_REVISION


def declared(revision: str, direction: str, method: str = DEFAULT_SWAP_METHOD,
             repointed: Iterable[str] = REPOINTED_AT_HEAD) -> StepLocks:
    """What ``revision`` declares for ``direction`` ('upgrade' or 'downgrade') with the swap's ``method``
    (only the swap has two; online, the exchange also locks the ``repointed`` tables); KeyError when undeclared."""
    if revision == SWAP_REVISION and method == "online":
        return online_swap(direction, repointed)
    return DECLARED[revision][direction]


def step_tables(steps: Sequence[tuple[str, str]], method: str = DEFAULT_SWAP_METHOD,
                repointed: Iterable[str] = REPOINTED_AT_HEAD) -> dict[str, str]:
    """The strongest lock per table over several (revision, direction) steps."""
    result: dict[str, str] = {}
    for revision, direction in steps:
        for table, mode in declared(revision, direction, method, repointed).tables.items():
            result[table] = strongest([mode, result[table]]) if table in result else mode
    return result


# ---------------------------------------------------------------- who holds locks now (this database only)


@dataclass(frozen=True)
class Holder:
    """A session of this database, or a prepared transaction (no session: ``pid`` None, ``prepared`` its gid),
    that holds (or waits for) a lock on a table: ids and timings, never its query."""

    pid: int | None
    application: str
    table: str
    mode: str  # SQL spelling
    granted: bool
    state: str
    xact_s: float | None
    prepared: str | None = None

    def describe(self) -> str:
        age = f", in a transaction for {self.xact_s:.0f}s" if self.xact_s is not None else ""
        verb = "holds" if self.granted else "waits for"
        if self.prepared is not None:
            return (f"prepared transaction {self.prepared!r} {verb} {self.mode} on {self.table}, prepared "
                    f"{self.xact_s:.0f}s ago (it holds its locks until COMMIT PREPARED or ROLLBACK PREPARED)")
        return f"pid {self.pid} ({self.application or 'no application_name'}) {verb} {self.mode} on {self.table}{age}"

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "application": self.application, "table": self.table, "mode": self.mode,
                "granted": self.granted, "state": self.state, "xact_s": self.xact_s, "prepared": self.prepared}


# pg_locks and pg_stat_activity are cluster-wide, and a database made from a template shares the
# template's relation OIDs: every query here is scoped to the current database. A prepared transaction's locks
# have no pid: it is found by its transaction id's lock (same virtual transaction) in pg_prepared_xacts.
HOLDERS_SQL = """
SELECT l.pid, COALESCE(a.application_name, ''), l.relation::regclass::text, l.mode, l.granted,
       COALESCE(a.state, ''),
       round(extract(epoch FROM clock_timestamp() - COALESCE(a.xact_start, p.prepared))::numeric, 1)::float8, p.gid
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_locks x ON l.pid IS NULL AND x.pid IS NULL AND x.locktype = 'transactionid'
                    AND x.virtualtransaction = l.virtualtransaction
LEFT JOIN pg_prepared_xacts p ON p.transaction = x.transactionid
WHERE l.locktype = 'relation' AND l.mode <> 'SIReadLock'  -- a SERIALIZABLE predicate lock blocks no lock
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = ANY (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)
  AND (a.pid IS NOT NULL OR p.gid IS NOT NULL)
  AND l.pid IS DISTINCT FROM pg_backend_pid() AND NOT (COALESCE(l.pid, 0) = ANY (%s::int[]))
ORDER BY COALESCE(a.xact_start, p.prepared) NULLS LAST, l.pid, 3
"""


def holders(conn: psycopg.Connection[Any], wanted: Mapping[str, str], *, exclude: Sequence[int] = ()) -> list[Holder]:
    """Sessions of this database whose lock on one of ``wanted``'s tables conflicts with the mode wanted there.

    ``wanted`` maps table -> the mode a step will request. Waiting requests are
    listed too: a request queued ahead of ours is served first.
    """
    if not wanted:
        return []
    rows = conn.execute(HOLDERS_SQL, (list(wanted), list(exclude))).fetchall()
    found = []
    for pid, app, table, mode, granted, state, xact_s, prepared in rows:
        qualified = table if "." in table else f"public.{table}"
        want = wanted.get(qualified) or wanted.get(table)
        if want and conflicts(want, mode):
            found.append(Holder(pid, app, qualified, sql_mode(mode), granted, state, xact_s, prepared))
    return found


def exclusive_holders(conn: psycopg.Connection[Any], *, exclude: Sequence[int] = ()) -> list[Holder]:
    """Sessions of this database holding ACCESS EXCLUSIVE or EXCLUSIVE on any table: what makes readers wait."""
    rows = conn.execute(
        HOLDERS_SQL.replace("AND l.relation = ANY (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)",
                            "AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock') AND l.granted "
                            "AND l.relation IN (SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p'))"),
        (list(exclude),)).fetchall()
    return [Holder(pid, app, table if "." in table else f"public.{table}", sql_mode(mode), granted, state, xact_s,
                   prepared) for pid, app, table, mode, granted, state, xact_s, prepared in rows]


OLD_SNAPSHOTS_SQL = """
SELECT pid, COALESCE(application_name, ''), COALESCE(state, ''),
       round(extract(epoch FROM clock_timestamp() - xact_start)::numeric, 1)::float8
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND NOT (pid = ANY (%s::int[]))
  AND backend_xmin IS NOT NULL AND backend_type = 'client backend'
ORDER BY xact_start NULLS LAST
"""


def snapshot_holders(conn: psycopg.Connection[Any], *, exclude: Sequence[int] = ()) -> list[tuple[int, str, str, float | None]]:
    """Sessions of this database holding a snapshot: what CREATE INDEX CONCURRENTLY waits for. (pid, app, state, age)."""
    return [tuple(row) for row in conn.execute(OLD_SNAPSHOTS_SQL, (list(exclude),)).fetchall()]
