"""reserve access: the role access matrix, and widened access as a no-go unless declared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reserve.cli import main
from reserve.rollout import access, rehearsal
from tests.support import Database


def _matrix(db_: Database) -> str:
    with db_.connect(autocommit=True) as conn:
        return access.as_text(access.matrix(conn))


def test_the_matrix_shows_each_roles_privileges_rls_and_the_policies_that_apply(head_db: Database):
    lines = _matrix(head_db).splitlines()
    assert "public.allocations | * | RLS enabled, not forced" in lines
    assert "public.allocations | anon | table privileges: -" in lines
    assert "public.allocations | service_role | table privileges: SELECT,INSERT,UPDATE,DELETE" in lines
    assert 'public.allocations | service_role | policy ALL "Tenant service role can manage allocations" (PERMISSIVE)' \
        in lines
    purge = next(line for line in lines if line.startswith("public.purge_booking_confirmation_results("))
    assert purge.endswith("| anon | function privileges: -")
    assert any("purge_booking_confirmation_results(" in line and "| reserve_maintenance | function privileges: EXECUTE"
               in line for line in lines)
    assert any("purge_booking_confirmation_results(" in line and "| service_role | function privileges: -" in line
               for line in lines)  # 0003c took it from the venues


def test_the_chains_own_widenings_from_the_baseline_to_head_are_all_declared(baseline_db: Database):
    before = _matrix(baseline_db)
    baseline_db.upgrade("head")
    found = access.widened(before, _matrix(baseline_db))
    assert found and access.undeclared(found) == []
    assert any(w.object == "public.booking_confirmation_results" and w.role == "service_role" for w in found)


@pytest.mark.parametrize("plant, expected", [
    ("GRANT SELECT ON public.bookings TO anon", "public.bookings | anon | privilege SELECT"),
    ("CREATE POLICY wide_open ON public.allocations FOR SELECT TO service_role USING (true)",
     'public.allocations | service_role | policy SELECT "wide_open" (PERMISSIVE)'),
    ("ALTER TABLE public.zones DISABLE ROW LEVEL SECURITY", "public.zones | * | RLS disabled"),
])
def test_an_undeclared_widening_is_a_no_go_of_the_rehearsals_access_step(head_db: Database, tmp_path: Path,
                                                                         plant: str, expected: str):
    (tmp_path / "access-before.txt").write_text(_matrix(head_db))
    with head_db.connect(autocommit=True) as conn:
        conn.execute(plant)
    (tmp_path / "access-after.txt").write_text(_matrix(head_db))
    with pytest.raises(rehearsal.StepFailed, match="not declared") as failed:
        rehearsal.check_access(tmp_path)
    assert expected in str(failed.value)
    assert expected.split(" | ")[0] in (tmp_path / "access-diff.txt").read_text()


def test_nothing_changed_is_no_widening(head_db: Database, tmp_path: Path):
    for name in ("access-before.txt", "access-after.txt"):
        (tmp_path / name).write_text(_matrix(head_db))
    assert rehearsal.check_access(tmp_path).startswith("0 widened")


def test_reserve_access_prints_the_matrix_and_json_has_it_per_role(head_db: Database):
    env = {"DATABASE_URL": head_db.url.render_as_string(hide_password=False)}
    text = CliRunner().invoke(main, ["access"], env=env)
    assert text.exit_code == 0 and "public.allocations | service_role | table privileges:" in text.output
    assert head_db.url.password not in text.output
    report = json.loads(CliRunner().invoke(main, ["access", "--json"], env=env).output)
    assert {c["name"] for c in report["checks"]} >= {"anon", "service_role", "reserve_maintenance"}
    assert report["facts"]["matrix"] == text.output.splitlines()[1:]
