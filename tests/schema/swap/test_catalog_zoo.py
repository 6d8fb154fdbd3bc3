"""pg_dump is the judge: after the online swap the catalog is what the locked method leaves, or the swap refuses.

Every feature of the catalog zoo (tests/catalog_zoo.py) is built below the
swap; two copies of the same database are upgraded, one online, one locked,
and their ``pg_dump --schema-only`` compared (the swap's machinery left out).
"""

from __future__ import annotations

import difflib
import os
import pwd
from collections.abc import Callable

import pytest
from alembic.util import CommandError

from reserve import db
from reserve.report import FAIL, OK
from reserve.rollout import preflight
from reserve.rollout.ephemeral import SERVER_USER_WHEN_ROOT, EphemeralPostgres
from tests import catalog_zoo as zoo
from tests.support import ONLINE, Database

LOCKED = ["swap_method=locked"]
TABLESPACE = "tablespace of the table and two of its indexes"


def _same(expected: str, got: str, what: str) -> None:
    """Equal dumps, or the diff (a few lines around each difference) as the failure."""
    if expected != got:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "expected", what, n=3))
        pytest.fail(f"pg_dump differs ({what}):\n{diff[:6000]}")


@pytest.fixture(scope="session")
def zoo_space(pg_server) -> str | None:
    """A tablespace in a directory the server's user owns; None on a server this suite did not start."""
    if not isinstance(pg_server, EphemeralPostgres):
        return None
    location = pg_server.workdir / "zoo_space"
    if not location.exists():
        location.mkdir()
        if pg_server.as_root:
            owner = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            os.chown(location, owner.pw_uid, owner.pw_gid)
        with db.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE zoo_space LOCATION '{location}'")
    return "zoo_space"


def _features(zoo_space: str | None) -> dict[str, str]:
    features = dict(zoo.CARRIED)
    if zoo_space:
        features[TABLESPACE] = (
            f"ALTER TABLE public.allocations SET TABLESPACE {zoo_space};"
            f"ALTER INDEX public.allocations_pkey SET TABLESPACE {zoo_space};"
            f"CREATE INDEX zoo_spaced_idx ON public.allocations (updated_at) TABLESPACE {zoo_space};")
    return features


def _build(features: list[str], zoo_space: str | None) -> Callable[[Database], None]:
    def prepare(database: Database) -> None:
        with database.connect(autocommit=True) as conn:
            conn.execute(zoo.ROLES)
            for name in features:
                conn.execute(_features(zoo_space)[name])
    return prepare


@pytest.fixture(scope="module")
def whole_zoo(make_template, zoo_space) -> str:
    """A template below the swap with every carried feature at once."""
    return make_template("pre_swap", _build(list(_features(zoo_space)), zoo_space))


@pytest.mark.parametrize("feature", [*zoo.CARRIED, TABLESPACE])
def test_after_the_online_upgrade_pg_dump_prints_what_the_locked_upgrade_leaves(feature, make_template, clone,
                                                                                zoo_space):
    if feature not in _features(zoo_space):
        pytest.skip("a tablespace needs a directory on the server's machine: only on the suite's own server")
    template = make_template("pre_swap", _build([feature], zoo_space))
    online, locked = clone(template), clone(template)
    online.upgrade("head", ONLINE)
    locked.upgrade("head", LOCKED)
    _same(zoo.schema_dump(locked.url), zoo.schema_dump(online.url), f"online, {feature}")


def test_with_the_whole_zoo_finish_and_every_downgrade_leave_what_the_locked_method_leaves(whole_zoo, clone):
    before = zoo.schema_dump(clone(whole_zoo).url)
    locked, online, rolled_back = clone(whole_zoo), clone(whole_zoo), clone(whole_zoo)
    locked.upgrade("head", LOCKED)
    after = zoo.schema_dump(locked.url)
    for database in (online, rolled_back):
        database.upgrade("head", ONLINE)
        _same(after, zoo.schema_dump(database.url), "online upgrade, window open")
    online.close_window()
    _same(after, zoo.schema_dump(online.url), "online upgrade, window closed")
    rolled_back.downgrade("-1", ONLINE)
    _same(before, zoo.schema_dump(rolled_back.url), "online downgrade inside the window (the exchange back)")
    online.downgrade("-1", ONLINE)
    _same(before, zoo.schema_dump(online.url), "online downgrade after the window (a rebuild)")
    locked.downgrade("-1", LOCKED)
    _same(before, zoo.schema_dump(locked.url), "locked downgrade")


@pytest.mark.parametrize("feature", list(zoo.REFUSED))
def test_what_the_online_method_cannot_carry_stops_it_before_anything_is_built(feature, pre_swap_db: Database):
    sql, named = zoo.REFUSED[feature]
    with pre_swap_db.connect(autocommit=True) as conn:
        conn.execute(sql)
    before = zoo.schema_dump(pre_swap_db.url)
    with pytest.raises(CommandError) as refused:
        pre_swap_db.upgrade("head", ONLINE)
    lines = [line.strip() for line in str(refused.value).splitlines()]
    assert any(line.startswith(f"{named}: ") for line in lines), str(refused.value)
    assert "-x swap_method=locked" in lines[0]
    with pre_swap_db.connect() as conn:
        assert conn.execute("SELECT to_regnamespace('reserve_swap')").fetchone()[0] is None
    assert zoo.schema_dump(pre_swap_db.url) == before
    report = preflight.preflight(pre_swap_db.url, swap_method="online")
    carry = next(check for check in report.checks if check.name == "online carry")
    assert carry.status == FAIL and any(line.startswith(named) for line in carry.data["refused"])
    pre_swap_db.upgrade("head", LOCKED)  # the fallback it names works


def test_preflight_lists_what_the_online_method_carries(whole_zoo, clone):
    report = preflight.preflight(clone(whole_zoo).url, swap_method="online")
    carry = next(check for check in report.checks if check.name == "online carry")
    assert carry.status == OK
    assert "public.zoo_refs.zoo_refs_allocation_fkey (NOT VALID, kept so)" in carry.data["carried"][
        "foreign keys of other tables"]
    assert "public.zoo_invoker (security_invoker=true, security_barrier=true, check_option=local)" in carry.data[
        "carried"]["views"]
    assert "zoo_filtered (column list) (row filter)" in carry.data["carried"]["publications"]
    assert {"zoo_always", "zoo_disabled", "zoo_replica"} <= set(carry.data["carried"]["triggers"])
