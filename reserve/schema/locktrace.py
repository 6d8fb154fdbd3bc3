"""The locks a migration really takes, statement by statement.

Like ``eugene trace``: after every statement the migrating connection runs, it
reads ``pg_locks`` for its own backend and records the table locks it then
holds (locks accumulate until the revision's transaction commits, so what a
statement added is what is new since the previous one). Each lock is named
by the table it protects: a lock on an index, a TOAST table or an owned sequence
counts as a lock on its table, since it blocks that table's readers or writers just the
same. Relations that did not exist when the step began were created by it:
nobody else can see them, and they are marked, not checked.

``reserve.schema.locks.DECLARED`` says what each revision may take; ``undeclared``
lists every traced lock beyond that. The rehearsal writes the trace to
``locks.txt`` and per step into ``summary.json``.

Limit (the same as eugene's): a statement run outside a transaction
(``CREATE INDEX CONCURRENTLY`` in an autocommit block) releases its locks when
it ends, so the trace shows none after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from reserve.schema import failures, locks
from reserve.schema.options import DEFAULT_SWAP_METHOD

VERSION_TABLE = "public.alembic_version"
_USER_RELATIONS = """
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       COALESCE(quote_ident(tn.nspname) || '.' || quote_ident(t.relname),
                quote_ident(on_.nspname) || '.' || quote_ident(o.relname),
                quote_ident(sn.nspname) || '.' || quote_ident(s.relname),
                quote_ident(n.nspname) || '.' || quote_ident(c.relname))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class t ON t.oid = i.indrelid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_class o ON o.reltoastrelid = c.oid LEFT JOIN pg_namespace on_ ON on_.oid = o.relnamespace
LEFT JOIN pg_depend d ON c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class s ON s.oid = d.refobjid LEFT JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT starts_with(n.nspname, 'pg_temp_') AND NOT starts_with(n.nspname, 'pg_toast_temp_')
  AND (n.nspname <> 'pg_toast' OR on_.nspname NOT IN ('pg_catalog', 'information_schema'))
"""
_HELD = """
SELECT l.relation::oid, l.mode FROM pg_locks l
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class TracedLock:
    table: str  # the table the lock protects (an index's or TOAST table's own table)
    relation: str  # the relation actually locked
    mode: str  # SQL spelling
    new: bool  # created by this step: invisible to everyone else until it commits


@dataclass
class TracedStatement:
    statement: str  # its first 160 characters, whitespace collapsed
    held: list[TracedLock]  # every table lock the backend held after it
    added: list[TracedLock]  # those it did not hold before this statement


@dataclass
class TracedStep:
    step: str  # "upgrade 0002_confirmation_results", or "before the first revision"
    revision: str | None
    direction: str | None
    statements: list[TracedStatement] = field(default_factory=list)
    completed: bool = False

    def strongest(self) -> dict[str, str]:
        """The strongest lock per existing table over the step (what the declaration must cover)."""
        modes: dict[str, list[str]] = {}
        for statement in self.statements:
            for lock in statement.held:
                if not lock.new:
                    modes.setdefault(lock.table, []).append(lock.mode)
        return {table: locks.strongest(found) or "" for table, found in sorted(modes.items())}

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "completed": self.completed, "statements": len(self.statements),
                "strongest": self.strongest(),
                "trace": [{"statement": s.statement, "added": [asdict(lock) for lock in s.added]}
                          for s in self.statements]}


class LockTrace:
    """Attach to the migrating connection (``attach``); steps are closed by Alembic's on_version_apply."""

    def __init__(self, method: str = DEFAULT_SWAP_METHOD) -> None:
        self.method = method  # the swap's method in this run: its declaration depends on it
        self.steps: list[TracedStep] = []
        self._open: TracedStep | None = None
        self._names: dict[int, tuple[str, str]] = {}  # oid -> (relation, table), as the step began
        self._held: set[tuple[int, str]] = set()
        self._busy = False

    # -------------------------------------------------------------- wiring

    def attach(self, connection: sa.Connection) -> None:
        event.listen(connection, "before_cursor_execute", self._before)
        event.listen(connection, "after_cursor_execute", self._after)

    def detach(self, connection: sa.Connection) -> None:
        for name, fn in (("before_cursor_execute", self._before), ("after_cursor_execute", self._after)):
            if event.contains(connection, name, fn):
                event.remove(connection, name, fn)
        if self._open is not None and not self._open.statements:
            self.steps.remove(self._open)
        self._open = None

    def on_version_apply(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        """Alembic callback after each revision: the statements seen so far were that revision's."""
        direction = "upgrade" if step.is_upgrade else "downgrade"
        revision = step.up_revision_id  # the upper end of the step, in both directions
        current = self._open or TracedStep("", None, None)
        current.step, current.revision, current.direction = f"{direction} {revision}", revision, direction
        current.completed = True
        if self._open is None:
            self.steps.append(current)
        self._open = None

    def fail(self, step: str, revision: str | None, direction: str | None) -> None:
        """Name the step that was running when the run failed (its statements stay, not completed)."""
        if self._open is not None:
            self._open.step, self._open.revision, self._open.direction = step, revision, direction
            self._open = None

    # -------------------------------------------------------------- recording

    def _driver(self, conn: sa.Connection) -> Any:
        return conn.connection.driver_connection

    def _before(self, conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if self._busy or self._open is not None:
            return
        self._busy = True
        try:
            rows = self._driver(conn).execute(_USER_RELATIONS).fetchall()
        finally:
            self._busy = False
        self._names = {oid: (relation, table) for oid, relation, table in rows}
        self._held = set()
        self._open = TracedStep("before the first revision", None, None)
        self.steps.append(self._open)

    def _after(self, conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if self._busy or self._open is None:
            return
        self._busy = True
        try:
            driver = self._driver(conn)
            held_rows = driver.execute(_HELD).fetchall()
            unknown = [oid for oid, _ in held_rows if oid not in self._names]
            names = dict(self._names)
            if unknown:
                # Created by this step (or a catalog relation, filtered out below).
                for oid, relation, table in driver.execute(
                        _USER_RELATIONS + " AND c.oid = ANY (%s::oid[])", (unknown,)).fetchall():
                    names[oid] = (relation, table)
        finally:
            self._busy = False
        held: list[TracedLock] = []
        added: list[TracedLock] = []
        now: set[tuple[int, str]] = set()
        for oid, mode in held_rows:
            if oid not in names:
                continue  # pg_catalog and other system relations
            relation, table = names[oid]
            lock = TracedLock(table, relation, locks.sql_mode(mode), oid not in self._names)
            held.append(lock)
            now.add((oid, mode))
            if (oid, mode) not in self._held:
                added.append(lock)
        self._held = now
        self._open.statements.append(TracedStatement(failures.one_line(statement, 160), held, added))

    # -------------------------------------------------------------- reading

    def undeclared(self) -> list[str]:
        """Every traced lock beyond what the steps' revisions declare (for this run's swap method)."""
        return undeclared(self.steps, self.method)

    @property
    def statement_count(self) -> int:
        return sum(len(step.statements) for step in self.steps)

    def render(self) -> str:
        """locks.txt: per step, each statement and the table locks it added."""
        lines = []
        for step in self.steps:
            declared = _declared(step, self.method)
            lines.append(f"{step.step}{'' if step.completed else ' (did not complete)'}")
            if declared is not None:
                shown = ", ".join(f"{mode} on {table}" for table, mode in sorted(declared.tables.items())) or "nothing"
                lines.append(f"  declared: {shown}")
            for number, statement in enumerate(step.statements, 1):
                lines.append(f"  [{number}] {statement.statement}")
                lines.extend(f"        + {line}" for line in _added(statement.added))
            lines.append("")
        lines.append(f"{self.statement_count} statements traced")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps([step.as_dict() for step in self.steps], indent=2)


def _added(added: list[TracedLock]) -> list[str]:
    """What a statement added, one line per existing table (its strongest new mode), then what it created."""
    by_table: dict[str, list[TracedLock]] = {}
    created: dict[str, None] = {}
    new_tables = {lock.table for lock in added if lock.new and lock.relation == lock.table}
    for lock in added:
        if lock.new and lock.relation == lock.table:
            created[lock.table] = None
        elif lock.new and lock.table not in new_tables and not lock.relation.startswith("pg_toast."):
            created[f"{lock.relation} on {lock.table}"] = None
        elif not lock.new:
            by_table.setdefault(lock.table, []).append(lock)
    lines = []
    for table, found in by_table.items():
        mode = locks.strongest(lock.mode for lock in found)
        via = sorted({lock.relation for lock in found if lock.mode == mode and lock.relation != table})
        on_table = any(lock.relation == table and lock.mode == mode for lock in found)
        lines.append(f"{mode} on {table}" + ("" if on_table or not via else f" (via {', '.join(via)})"))
    if created:
        lines.append(f"creates {', '.join(created)} (invisible to other sessions until the step commits)")
    return lines


def _declared(step: TracedStep, method: str) -> locks.StepLocks | None:
    try:
        return locks.declared(step.revision or "", step.direction or "", method)
    except KeyError:
        return None


def undeclared(steps: Iterable[TracedStep], method: str = DEFAULT_SWAP_METHOD) -> list[str]:
    """Every traced lock on an existing table that the step's declaration does not cover, as sentences."""
    found = []
    for step in steps:
        declared = _declared(step, method)
        for statement in step.statements:
            for lock in statement.added:
                if lock.new or lock.table == VERSION_TABLE:
                    continue
                allowed = declared.tables.get(lock.table) if declared is not None else None
                if allowed is None:
                    found.append(f"{step.step}: `{statement.statement}` takes {lock.mode} on {lock.table}, "
                                 "which the revision does not declare")
                elif not locks.covers(allowed, lock.mode):
                    found.append(f"{step.step}: `{statement.statement}` takes {lock.mode} on {lock.table}, "
                                 f"stronger than the declared {allowed}")
    return found
