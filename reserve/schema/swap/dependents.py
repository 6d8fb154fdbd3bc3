"""Everything that points at allocations by identity, and how the exchange re-points it.

Foreign keys, policy expressions, views and publications hold relation OIDs:
moving the live table to another schema does not re-point them. They are
found in the catalog (pg_depend, pg_constraint, pg_publication_rel), their
definitions captured with every name schema-qualified before the exchange,
and replayed after it, when ``public.allocations`` names the other table, so
that pg_dump then prints what the in-place method leaves:

- a foreign key from another table is dropped and added again NOT VALID, its
  comment set again (validated afterwards, without blocking writers, unless it
  was NOT VALID before: reserve_swap.keys_to_validate lists the ones to validate);
- a policy of another table is altered with its own expressions (its comment stays);
- a view is replaced with its own definition and options (security_invoker,
  security_barrier, check_option);
- a publication drops the old table and adds the new one, with its column list
  and row filter;
- a non-internal trigger of the table itself moves to the new table, with its
  enable state and comment.

What cannot be re-pointed makes the swap refuse before it builds anything
(reserve.schema.swap.refusals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg.sql import Literal

from reserve.schema.session import qualified_names
from reserve.schema.swap.state import CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER, KEYS_TO_VALIDATE, LIVE

OURS = (CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER)
# Created with the machinery, and before an exchange whose machinery an older release built (never under its lock).
KEYS_TO_VALIDATE_SQL = f"CREATE TABLE IF NOT EXISTS {KEYS_TO_VALIDATE} (table_name text, constraint_name text)"


@dataclass(frozen=True)
class ForeignKey:
    table: str
    name: str
    definition: str  # as pg_get_constraintdef prints it, names qualified
    validated: bool = True
    comment: str | None = None  # quoted by quote_literal

    def repoint(self) -> list[str]:
        out = [f'ALTER TABLE {self.table} DROP CONSTRAINT "{self.name}", '
               f'ADD CONSTRAINT "{self.name}" {self.definition} NOT VALID']
        if self.comment is not None:
            out.append(f'COMMENT ON CONSTRAINT "{self.name}" ON {self.table} IS {self.comment}')
        if self.validated:
            out.append(f"INSERT INTO {KEYS_TO_VALIDATE} VALUES ({Literal(self.table).as_string(None)}, "
                       f"{Literal(self.name).as_string(None)})")
        return out

    def validate(self) -> str:
        return f'ALTER TABLE {self.table} VALIDATE CONSTRAINT "{self.name}"'


@dataclass(frozen=True)
class Policy:
    table: str
    name: str
    using: str | None
    check: str | None

    def repoint(self) -> str:
        clauses = (f" USING ({self.using})" if self.using else "") + (f" WITH CHECK ({self.check})" if self.check else "")
        return f'ALTER POLICY "{self.name}" ON {self.table}{clauses}'


@dataclass(frozen=True)
class View:
    name: str
    definition: str
    options: tuple[str, ...]  # reloptions: security_invoker, security_barrier, check_option

    def repoint(self) -> str:
        options = f" WITH ({', '.join(self.options)})" if self.options else ""
        return f"CREATE OR REPLACE VIEW {self.name}{options} AS {self.definition}"


@dataclass(frozen=True)
class Membership:
    """The table in a publication: with its column list and row filter, as ``ALTER PUBLICATION … ADD TABLE``
    takes them."""

    publication: str
    columns: tuple[str, ...]  # () publishes every column
    row_filter: str | None

    def repoint(self, moved_to: str) -> list[str]:
        columns = f" ({', '.join(self.columns)})" if self.columns else ""
        where = f" WHERE ({self.row_filter})" if self.row_filter else ""
        return [f"ALTER PUBLICATION {self.publication} DROP TABLE {moved_to}",
                f"ALTER PUBLICATION {self.publication} ADD TABLE {LIVE}{columns}{where}"]


_ENABLE = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}  # 'O': as created


@dataclass(frozen=True)
class Trigger:
    name: str
    definition: str  # CREATE TRIGGER …
    enabled: str  # pg_trigger.tgenabled
    comment: str | None  # quoted by quote_literal

    def repoint(self, moved_to: str) -> list[str]:
        out = [f'DROP TRIGGER "{self.name}" ON {moved_to}', self.definition]
        if self.enabled in _ENABLE:
            out.append(f'ALTER TABLE {LIVE} {_ENABLE[self.enabled]} "{self.name}"')
        if self.comment is not None:
            out.append(f'COMMENT ON TRIGGER "{self.name}" ON {LIVE} IS {self.comment}')
        return out


@dataclass
class Dependents:
    """What must follow ``public.allocations`` when it changes identity."""

    foreign_keys: list[ForeignKey] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    views: list[View] = field(default_factory=list)
    publications: list[Membership] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        """Other tables the exchange alters (and so locks): those of the foreign keys and policies."""
        return sorted({fk.table for fk in self.foreign_keys} | {p.table for p in self.policies})

    def repoint(self, moved_to: str) -> list[str]:
        """The statements that make everything point at the table now named public.allocations (the previous one
        having moved to ``moved_to``), in an order that never leaves a dangling reference."""
        out = [statement for fk in self.foreign_keys for statement in fk.repoint()]
        out += [policy.repoint() for policy in self.policies]
        out += [view.repoint() for view in self.views]
        out += [statement for membership in self.publications for statement in membership.repoint(moved_to)]
        out += [statement for trigger in self.triggers for statement in trigger.repoint(moved_to)]
        return out


def find(session: Any, table: str = LIVE) -> Dependents:
    """Everything outside ``table`` that depends on it, definitions captured schema-qualified (the caller's
    transaction gets a local search_path of pg_catalog)."""
    qualified_names(session)
    found = Dependents()
    for row in session.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated, "
            "       quote_literal(obj_description(oid, 'pg_constraint')) FROM pg_constraint "
            "WHERE confrelid = %s::regclass AND conrelid <> confrelid AND contype = 'f' ORDER BY 1, 2",
            (table,)).fetchall():
        found.foreign_keys.append(ForeignKey(*row))
    # Deparsed only for the policies that depend on the table: pg_get_expr opens (ACCESS SHARE) the policy's table.
    for other, name, using, check in session.execute(
            "WITH dependent AS MATERIALIZED (SELECT DISTINCT d.objid AS oid FROM pg_depend d "
            "  WHERE d.classid = 'pg_policy'::regclass AND d.refclassid = 'pg_class'::regclass "
            "    AND d.refobjid = %s::regclass) "
            "SELECT p.polrelid::regclass::text, p.polname, pg_get_expr(p.polqual, p.polrelid), "
            "       pg_get_expr(p.polwithcheck, p.polrelid) "
            "FROM dependent JOIN pg_policy p ON p.oid = dependent.oid WHERE p.polrelid <> %s::regclass ORDER BY 1, 2",
            (table, table)).fetchall():
        found.policies.append(Policy(other, name, using, check))
    for view, definition, options in session.execute(
            "SELECT DISTINCT r.ev_class::regclass::text, pg_get_viewdef(r.ev_class), v.reloptions FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
            "  AND d.refobjid = %s::regclass AND r.ev_class <> %s::regclass AND v.relkind = 'v' ORDER BY 1",
            (table, table)).fetchall():
        found.views.append(View(view, definition, tuple(options or ())))
    for publication, columns, row_filter in session.execute(
            "SELECT quote_ident(p.pubname), "
            "       ARRAY(SELECT quote_ident(a.attname) FROM unnest(r.prattrs) WITH ORDINALITY k(attnum, n) "
            "             JOIN pg_attribute a ON a.attrelid = r.prrelid AND a.attnum = k.attnum ORDER BY k.n), "
            "       pg_get_expr(r.prqual, r.prrelid) "
            "FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "WHERE r.prrelid = %s::regclass ORDER BY 1", (table,)).fetchall():
        found.publications.append(Membership(publication, tuple(columns), row_filter))
    for row in session.execute(
            "SELECT tgname, pg_get_triggerdef(oid), tgenabled, quote_literal(obj_description(oid, 'pg_trigger')) "
            "FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal AND tgname <> ALL (%s) ORDER BY 1",
            (table, list(OURS))).fetchall():
        found.triggers.append(Trigger(*row))
    return found


def keys_to_validate(session: Any) -> list[tuple[str, str]]:
    """(table, constraint) of the foreign keys the exchange re-pointed NOT VALID that were valid before it."""
    return [tuple(row) for row in session.execute(
        f"SELECT table_name, constraint_name FROM {KEYS_TO_VALIDATE} ORDER BY 1, 2").fetchall()]


def remaining(session: Any, table: str) -> list[str]:
    """What still depends on ``table`` from outside it (after the exchange: nothing may, but its own objects)."""
    return [row[0] for row in session.execute(
        "SELECT d.classid::regclass::text || ' ' || d.objid::text FROM pg_depend d "
        "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass AND d.deptype = 'n' "
        "  AND NOT (d.classid = 'pg_constraint'::regclass AND EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = d.objid "
        "           AND c.conrelid = %s::regclass)) "
        "  AND NOT (d.classid = 'pg_policy'::regclass AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.oid = d.objid "
        "           AND p.polrelid = %s::regclass)) "
        "UNION ALL SELECT 'publication ' || p.pubname FROM pg_publication_rel r JOIN pg_publication p "
        "  ON p.oid = r.prpubid WHERE r.prrelid = %s::regclass",
        (table, table, table, table)).fetchall()]
