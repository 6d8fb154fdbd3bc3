"""DDL made during the swap is never undone by an exchange: it stops, listing the difference, with nothing changed."""

from __future__ import annotations

import pytest
from alembic.util import CommandError

from reserve.schema.swap import state as swap_state
from tests import catalog_zoo as zoo
from tests import swapping
from tests.support import ONLINE, Database

# DDL an operator may make on the live table inside the window, and the fact the refusal names.
IN_THE_WINDOW = {
    "an index": ("CREATE INDEX zoo_made_in_window ON public.allocations (created_at)", "index zoo_made_in_window"),
    "a policy": ("CREATE POLICY zoo_read ON public.allocations FOR SELECT TO zoo_reader USING (true)",
                 "policy zoo_read"),
    "a column rename": ("ALTER TABLE public.allocations RENAME COLUMN created_by TO made_by", "column 9"),
    "a comment": ("COMMENT ON TABLE public.allocations IS 'changed in the window'", "table"),
}


def _refusal(error: CommandError) -> list[str]:
    return [line.strip() for line in str(error).splitlines()[1:]]


@pytest.mark.parametrize("ddl", list(IN_THE_WINDOW))
def test_ddl_on_the_live_table_inside_the_window_stops_the_rollback_listing_it_with_nothing_changed(
        ddl, head_db: Database):
    sql, fact = IN_THE_WINDOW[ddl]
    with head_db.connect(autocommit=True) as conn:
        conn.execute(zoo.ROLES)
        conn.execute(sql)
    before = zoo.schema_dump(head_db.url)
    with pytest.raises(CommandError, match="no longer have the same definition") as refused:
        head_db.downgrade("-1", ONLINE)
    assert [line for line in _refusal(refused.value) if line.startswith(f"{fact}: public.allocations has ")]
    assert zoo.schema_dump(head_db.url) == before
    with head_db.connect() as conn:
        assert swap_state.read(conn).phase == swap_state.WINDOW


def test_grants_made_inside_the_window_are_kept_by_the_rollback_as_the_locked_one_keeps_them(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        conn.execute(zoo.ROLES)
        conn.execute("GRANT SELECT, UPDATE (created_by) ON public.allocations TO zoo_reader")
        conn.execute("REVOKE DELETE ON public.allocations FROM service_role")
    head_db.downgrade("-1", ONLINE)
    with head_db.connect() as conn:
        assert conn.execute("SELECT has_table_privilege('zoo_reader', 'public.allocations', 'SELECT'), "
                            "has_column_privilege('zoo_reader', 'public.allocations', 'created_by', 'UPDATE'), "
                            "has_table_privilege('service_role', 'public.allocations', 'DELETE')").fetchone() == (
            True, True, False)


def test_table_options_set_inside_the_window_are_kept_by_the_rollback(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {swap_state.SHADOW} SET (fillfactor = 70)")
        conn.execute("ALTER TABLE public.allocations SET (autovacuum_vacuum_scale_factor = 0, "
                     "toast.autovacuum_enabled = false)")
    head_db.downgrade("-1", ONLINE)
    with head_db.connect() as conn:
        assert conn.execute("SELECT c.reloptions, t.reloptions FROM pg_class c JOIN pg_class t ON t.oid = "
                            "c.reltoastrelid WHERE c.oid = 'public.allocations'::regclass").fetchone() == (
            ["autovacuum_vacuum_scale_factor=0"], ["autovacuum_enabled=false"])


def test_the_same_ddl_on_the_previous_table_lets_the_rollback_keep_it(head_db: Database):
    """The way out the refusal names: the same change on the other table; the exchange back then keeps it, as
    the locked rollback would."""
    with head_db.connect(autocommit=True) as conn:
        for table in ("public.allocations", swap_state.SHADOW):
            conn.execute(f"CREATE INDEX ON {table} (created_at)")
    head_db.downgrade("-1", ONLINE)
    with head_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'public.allocations'::regclass AND "
                            "pg_get_indexdef(indexrelid) LIKE '%%(created_at)'").fetchone()[0] == 1


def test_an_index_made_on_the_live_table_after_the_shadow_is_filled_stops_the_exchange(pre_swap_db: Database):
    with pre_swap_db.connect(autocommit=True) as conn:
        swapping.build(conn)
        swapping.backfill_rest(conn)
        conn.execute("CREATE INDEX zoo_made_during_copy ON public.allocations (created_at)")
    with pytest.raises(CommandError) as refused:
        pre_swap_db.upgrade("head", ONLINE)
    assert [line for line in _refusal(refused.value) if line.startswith("index zoo_made_during_copy: ")]
    with pre_swap_db.connect() as conn:
        assert swap_state.read(conn).phase == swap_state.BACKFILLED


def test_a_comment_made_while_the_exchange_waits_for_its_lock_stops_it_under_the_lock(pre_swap_db: Database):
    """Checked again once the lock is granted: DDL queued behind the exchange's request, made as soon as one
    attempt gave up, is found before anything is exchanged."""
    with pytest.raises(CommandError) as refused:
        swapping.exchange_with_ddl_queued(pre_swap_db, "COMMENT ON TABLE public.allocations IS 'made meanwhile'")
    assert [line for line in _refusal(refused.value) if line.startswith("table: ")]
    with pre_swap_db.connect() as conn:
        assert swap_state.read(conn).phase == swap_state.BACKFILLED
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.allocations'::regclass "
                            "AND conname = 'allocations_resource_window_excl'").fetchone()[0] == 1  # not exchanged
