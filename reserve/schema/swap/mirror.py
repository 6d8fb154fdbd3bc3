"""The mirror: every committed write to public.allocations copied into the standby, never failing the write.

Three triggers on one function (reserve/sql/functions/swap_mirror):
``reserve_swap_stage``, a row trigger on the live table, removes the
standby's version of each row written and queues its id;
``reserve_swap_apply``, a deferred constraint trigger on the queue, copies
the committed version at commit; ``reserve_swap_truncate`` empties the
standby when the live table is truncated. Every old
version of a transaction's rows is gone from the standby before any new one
is copied, so a transaction that passes through temporary overlaps, or swaps
two rows' windows, is mirrored by its final state only. A row the standby's
guard refuses (on the way down the old guard is the stronger one) is
recorded in ``reserve_swap.conflicts`` and the application's commit goes
through.
"""

from __future__ import annotations

from typing import Any

from reserve import sql
from reserve.schema.swap.state import APPLY_TRIGGER, LIVE, MIRROR_FUNCTION, PENDING, STAGE_TRIGGER, TRUNCATE_TRIGGER


def machinery_sql() -> str:
    """The schema, the state row, the queue and the conflicts table."""
    return sql.read("schema/swap_machinery.sql")


def function_sql() -> list[str]:
    return [sql.function_sql(MIRROR_FUNCTION, "v1")]


def install(guard_name: str, table: str = LIVE) -> list[str]:
    """Triggers that mirror ``table`` into the standby, whose guard is ``guard_name`` (checked at each copy)."""
    return [
        f"CREATE TRIGGER {STAGE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION reserve_swap.mirror()",
        f"CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION reserve_swap.mirror()",
        f"CREATE CONSTRAINT TRIGGER {APPLY_TRIGGER} AFTER INSERT ON {PENDING} DEFERRABLE INITIALLY DEFERRED "
        f"FOR EACH ROW EXECUTE FUNCTION reserve_swap.mirror('{guard_name}')",
    ]


def remove(table: str) -> list[str]:
    """Drop the triggers from ``table`` (the queue's trigger goes with the machinery or is re-created)."""
    return [f"DROP TRIGGER IF EXISTS {STAGE_TRIGGER} ON {table}", f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}",
            f"DROP TRIGGER IF EXISTS {APPLY_TRIGGER} ON {PENDING}"]


def installed_on(session: Any, table: str = LIVE) -> bool:
    return session.execute("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s)",
                           (table, STAGE_TRIGGER)).fetchone()[0]
