"""reserve preflight: go when it is safe, no-go naming every reason when it is not."""

from __future__ import annotations

import pytest

from reserve.report import FAIL, OK, WARN
from reserve.rollout import dataset, predictor
from reserve.rollout.preflight import is_production_looking, preflight
from reserve.schema import revisions
from tests.support import Database, Venue, act_as, slot
from tests.tenants import refused_sqlstate


def _status(report, name: str) -> str:
    return next(c.status for c in report.checks if c.name == name)


def test_baseline_with_valid_old_guard_is_go_without_a_table_scan(baseline_db: Database):
    with baseline_db.connect(autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=2, tables_per_restaurant=5, windows_per_table=10))
    report = preflight(baseline_db.url, "head", swap_method="online")
    assert report.verdict == "go", report.to_text()
    guard = next(c for c in report.checks if c.name == "guard data")
    assert "proved by the catalog" in guard.detail
    assert report.facts["step"].startswith("upgrade 0002_confirmation_results")
    hold = next(c for c in report.checks if c.name == "lock hold")
    # the exchange only: the measured constant, not a build scaled to the table
    assert hold.data["predicted_s"] == predictor.ONLINE_HOLD_S and "online method" in hold.detail
    background = next(c for c in report.checks if c.name == "background")
    assert background.data["predicted_s"] > 0 and "built allocations_no_overlap on a sample" in background.detail
    assert report.facts["predicted_extra_disk_bytes"] > 0 and "swap finish" in _detail(report, "extra disk")
    assert report.facts["predicted_confirm_p95_ratio"] >= 1  # the capture never makes a confirm cheaper


def _detail(report, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


def test_the_online_method_is_the_default_and_the_locked_one_predicts_the_build_under_the_lock(baseline_db: Database):
    with baseline_db.connect(autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=2, tables_per_restaurant=5, windows_per_table=10))
    by_default = preflight(baseline_db.url, "head")
    assert by_default.facts["swap_method"] == "online"
    assert "online method: catalog work only" in _detail(by_default, "lock hold")
    report = preflight(baseline_db.url, "head", swap_method="locked")
    hold = next(c for c in report.checks if c.name == "lock hold")
    assert hold.data["predicted_s"] > 0 and "locked method; built allocations_no_overlap on a sample" in hold.detail
    assert "background" not in {c.name for c in report.checks}
    assert report.facts["swap_method"] == "locked"


def test_a_rollback_inside_the_open_window_predicts_no_copy(head_db: Database):
    in_window = preflight(head_db.url, "-1")  # not told: the window goes on online, as alembic does
    assert in_window.facts["swap_method"] == "online"
    assert _detail(in_window, "background").startswith("none: the previous table is in step")
    head_db.close_window()
    after = preflight(head_db.url, "-1")
    assert after.facts["swap_method"] == "online"
    assert "of copying that blocks nobody" in _detail(after, "background")
    assert "until the rollback ends" in _detail(after, "extra disk")


def test_password_is_masked_in_the_report(baseline_db: Database):
    report = preflight(baseline_db.url, "head")
    assert baseline_db.url.password not in report.to_text() + report.to_json()
    assert "***" in report.facts["database"]


def test_drift_is_no_go_and_names_the_object(head_db: Database):
    with head_db.connect() as conn:
        conn.execute("DROP POLICY \"Tenant service role can manage booking confirmation results\" "
                     "ON booking_confirmation_results")
    report = preflight(head_db.url, "0003_confirm_v12")
    assert report.exit_code == 1
    assert _status(report, "drift") == FAIL
    assert "Tenant service role can manage booking confirmation results" in report.to_text()


def test_downgrade_with_cross_restaurant_overlaps_is_no_go_listing_the_ids(head_db: Database):
    with head_db.connect() as conn:
        first, second = Venue(conn, "A"), Venue(conn, "B")
        ids = [conn.execute(
            "INSERT INTO allocations (restaurant_id, resource_type, resource_id, \"window\") "
            "VALUES (%s, 'table', %s, tstzrange(%s, %s)) RETURNING id", (v.id, first.tables[0], *slot(24)),
        ).fetchone()[0] for v in (first, second)]
    report = preflight(head_db.url, "-1")  # the runbook's rollback check: what `alembic downgrade -1` undoes
    assert report.facts["target_revision"] == revisions.chain()[-2]
    guard = next(c for c in report.checks if c.name == "guard data")
    assert guard.status == FAIL
    assert sorted(guard.data["allocation_ids"]) == sorted(str(i) for i in ids)


def test_a_lock_holder_on_allocations_is_no_go_for_the_swap(baseline_db: Database):
    with baseline_db.connect() as holder:
        holder.execute("SELECT count(*) FROM allocations")
        report = preflight(baseline_db.url, "head")
        assert _status(report, "lock holders") == FAIL
        assert "holds ACCESS SHARE on public.allocations" in report.to_text()
        holder.rollback()
    assert _status(preflight(baseline_db.url, "head"), "lock holders") == OK


def test_lock_holders_are_no_go_on_every_table_the_step_locks_exclusively(baseline_db: Database):
    baseline_db.upgrade("0003a_operations")  # next: 0003b locks ten tables, then the swap locks allocations
    with baseline_db.connect() as holder:
        holder.execute("SELECT count(*) FROM table_inventory")
        to_head = preflight(baseline_db.url, "head")
        holder.rollback()
    assert _status(to_head, "lock holders") == FAIL
    assert "on public.table_inventory" in to_head.to_text()
    baseline_db.upgrade("0003c_maintenance_role")  # next: only the swap, which does not lock table_inventory
    with baseline_db.connect() as holder:
        holder.execute("SELECT count(*) FROM table_inventory")
        swap_only = preflight(baseline_db.url, "head")
        holder.rollback()
    assert _status(swap_only, "lock holders") == OK


def test_a_table_that_started_pointing_at_allocations_is_checked_as_the_online_exchange_will_lock_it(
        pre_swap_db: Database):
    """The exchange locks every table whose foreign keys point at allocations, read from the catalog; preflight reads
    the same list (reserve.schema.locks.online_exchange), so a reader of a table added since the release is named."""
    with pre_swap_db.connect() as conn:
        conn.execute("CREATE TABLE public.allocation_notes (allocation_id uuid REFERENCES public.allocations (id))")
        conn.commit()
    with pre_swap_db.connect() as holder:
        holder.execute("SELECT count(*) FROM allocation_notes")
        online = preflight(pre_swap_db.url, "head", swap_method="online")
        locked = preflight(pre_swap_db.url, "head", swap_method="locked")
        holder.rollback()
    assert _status(online, "lock holders") == FAIL and "on public.allocation_notes" in online.to_text()
    assert _status(locked, "lock holders") == OK  # the locked method re-points nothing


def test_rows_naming_another_venues_rows_are_a_warning_before_0003b_and_are_refused_after_it(
        baseline_db: Database):
    baseline_db.upgrade("0003a_operations")
    with baseline_db.connect() as conn:
        mine, theirs = Venue(conn, "A"), Venue(conn, "B")
        booking = mine.booking(slot(30))
        conn.execute("UPDATE bookings SET assigned_zone_id = %s WHERE id = %s", (theirs.zone, booking))
    report = preflight(baseline_db.url, "head")
    check = next(c for c in report.checks if c.name == "tenant references")
    assert check.status == WARN and report.verdict == "go", report.to_text()
    assert check.data["rows"] == {"bookings.assigned_zone_id": {"count": 1, "ids": [str(booking)]}}
    rewrite = "UPDATE bookings SET status = status WHERE id = %s"
    with baseline_db.connect() as conn:
        act_as(conn, "service_role", mine.id)
        assert refused_sqlstate(conn, rewrite, (booking,)) is None  # before 0003b: the venue may rewrite it

    baseline_db.upgrade("head")
    with baseline_db.connect() as conn:
        act_as(conn, "service_role", mine.id)
        assert refused_sqlstate(conn, rewrite, (booking,)) == "42501"  # what the warning said
    assert _status(preflight(baseline_db.url, "-1"), "tenant references") == OK  # the rollback keeps 0003b


def test_unknown_revision_is_a_usage_error(baseline_db: Database):
    with pytest.raises(revisions.UnknownRevision, match="nonsense"):
        preflight(baseline_db.url, "nonsense")


def test_a_relative_target_below_base_is_a_usage_error(baseline_db: Database):
    with pytest.raises(revisions.UnknownRevision, match="below base"):
        preflight(baseline_db.url, "-2")


def test_remote_database_without_archiving_needs_backup_confirmation(baseline_db: Database):
    # The test server, reached under a name that is not this machine's: what preflight sees for production.
    remote = baseline_db.url.set(host="db.internal", query={"hostaddr": baseline_db.url.host})
    assert is_production_looking(remote) and not is_production_looking(baseline_db.url)
    unconfirmed = preflight(remote, "head")
    assert _status(unconfirmed, "backup") == FAIL and unconfirmed.verdict == "no-go"
    assert "no --backup-confirmed for a remote database" in unconfirmed.to_text()
    assert _status(preflight(remote, "head", backup_confirmed=True), "backup") == OK
    assert _status(preflight(baseline_db.url, "head"), "backup") == WARN  # local: not required


def test_unadopted_baseline_is_no_go(empty_db: Database):
    with empty_db.connect() as conn:
        conn.execute("CREATE TABLE bookings (id uuid)")
    report = preflight(empty_db.url, "head")
    assert _status(report, "drift") == FAIL
    assert "reserve adopt" in report.to_text()


def test_without_a_hot_standby_the_replicas_check_says_so(baseline_db: Database, pg_server):
    report = preflight(baseline_db.url, "head", backup_confirmed=True)
    with baseline_db.connect() as conn:
        standbys = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
    if standbys:
        pytest.skip("TEST_DATABASE_URL's server has standbys")
    check = next(c for c in report.checks if c.name == "replicas")
    assert check.status == OK and check.detail == "no hot standby streams from this server"
