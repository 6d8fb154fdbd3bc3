"""Everything that points at allocations by identity, and how the exchange re-points it.

Foreign keys, policy expressions, views and publications hold relation OIDs:
moving the live table to another schema does not re-point them. They are
found in the catalog (pg_depend, pg_constraint, pg_publication_rel), their
definitions captured with every name schema-qualified before the exchange,
and replayed after it, when ``public.allocations`` names the other table:

- a foreign key from another table is dropped and added again NOT VALID
  (validated afterwards, without blocking writers);
- a policy of another table is altered with its own expressions;
- a view is replaced with its own definition;
- a publication drops the old table and adds the new one;
- a non-internal trigger of the table itself moves to the new table.

Anything else that depends on the table (an SQL-standard function body, a
rule) is not supported: the swap refuses before it builds anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reserve.schema.swap.state import CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER, LIVE

OURS = (CAPTURE_TRIGGER, CAPTURE_TRUNCATE_TRIGGER)


@dataclass(frozen=True)
class ForeignKey:
    table: str
    name: str
    definition: str  # as pg_get_constraintdef prints it, names qualified

    def repoint(self) -> str:
        return (f'ALTER TABLE {self.table} DROP CONSTRAINT "{self.name}", '
                f'ADD CONSTRAINT "{self.name}" {self.definition} NOT VALID')

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


@dataclass
class Dependents:
    """What must follow ``public.allocations`` when it changes identity."""

    foreign_keys: list[ForeignKey] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    views: list[tuple[str, str]] = field(default_factory=list)  # (view, definition)
    publications: list[str] = field(default_factory=list)
    triggers: list[tuple[str, str]] = field(default_factory=list)  # (name, CREATE TRIGGER …)
    unsupported: list[str] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        """Other tables the exchange alters (and so locks): those of the foreign keys and policies."""
        return sorted({fk.table for fk in self.foreign_keys} | {p.table for p in self.policies})

    def repoint(self, moved_to: str) -> list[str]:
        """The statements that make everything point at the table now named public.allocations (the previous one
        having moved to ``moved_to``), in an order that never leaves a dangling reference."""
        out = [fk.repoint() for fk in self.foreign_keys]
        out += [policy.repoint() for policy in self.policies]
        out += [f"CREATE OR REPLACE VIEW {view} AS {definition}" for view, definition in self.views]
        for publication in self.publications:
            out += [f"ALTER PUBLICATION {publication} DROP TABLE {moved_to}",
                    f"ALTER PUBLICATION {publication} ADD TABLE {LIVE}"]
        for name, definition in self.triggers:
            out += [f'DROP TRIGGER "{name}" ON {moved_to}', definition]
        return out


def find(session: Any, table: str = LIVE) -> Dependents:
    """Everything outside ``table`` that depends on it, definitions captured schema-qualified (the caller's
    transaction gets a local search_path of pg_catalog)."""
    session.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    found = Dependents()
    for other, name, definition in session.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE confrelid = %s::regclass AND conrelid <> confrelid AND contype = 'f' ORDER BY 1, 2",
            (table,)).fetchall():
        found.foreign_keys.append(ForeignKey(other, name, definition))
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
    for view, definition in session.execute(
            "SELECT DISTINCT r.ev_class::regclass::text, pg_get_viewdef(r.ev_class) FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid WHERE d.classid = 'pg_rewrite'::regclass "
            "AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass AND r.ev_class <> %s::regclass "
            "ORDER BY 1", (table, table)).fetchall():
        found.views.append((view, definition))
    found.publications = [row[0] for row in session.execute(
        "SELECT quote_ident(p.pubname) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
        "WHERE r.prrelid = %s::regclass ORDER BY 1", (table,)).fetchall()]
    for name, definition in session.execute(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "AND tgname <> ALL (%s) ORDER BY 1", (table, list(OURS))).fetchall():
        found.triggers.append((name, definition))
    found.unsupported = [f"{kind} {name}" for kind, name in session.execute(
        "SELECT CASE d.classid WHEN 'pg_proc'::regclass THEN 'function' WHEN 'pg_rewrite'::regclass THEN 'rule' "
        "       ELSE d.classid::regclass::text END, "
        "       CASE d.classid WHEN 'pg_proc'::regclass THEN d.objid::regprocedure::text "
        "            ELSE d.objid::text END "
        "FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass "
        "  AND d.classid NOT IN ('pg_class'::regclass, 'pg_type'::regclass, 'pg_attrdef'::regclass, "
        "                        'pg_constraint'::regclass, 'pg_policy'::regclass, 'pg_trigger'::regclass, "
        "                        'pg_publication_rel'::regclass) "
        "  AND NOT (d.classid = 'pg_rewrite'::regclass AND EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.oid = d.objid "
        "           AND r.ev_class <> %s::regclass AND r.rulename = '_RETURN')) "
        "ORDER BY 1, 2", (table, table)).fetchall()]
    return found


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
