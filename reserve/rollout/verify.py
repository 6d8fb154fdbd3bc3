"""``reserve verify``: the live database is what its revision promises, and the guard serves the probe."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from reserve import db
from reserve.report import FAIL, OK, WARN, Report
from reserve.schema import catalog, expectations, guards, probes, revisions, unfinished
from reserve.schema.swap import state as swap_state

TOO_FEW_ROWS_TO_JUDGE = 1000


def check_window(report: Report, conn: Any, swap: swap_state.SwapState) -> None:
    """At head with the online upgrade's window open: which of the two accepted states this is, and whether the
    rollback is still the instant exchange back."""
    report.facts["swap_window"] = f"open since {swap.window_opened_at:%Y-%m-%d %H:%M} UTC"
    if swap.conflicts:
        ids = [row[0] for row in swap_state.conflicts(conn)]
        report.add("swap window", WARN, f"open since {swap.window_opened_at:%Y-%m-%d %H:%M} UTC; the rollback is "
                   f"not instant: {swap.conflicts} allocation(s) the previous table cannot take ({', '.join(ids)})",
                   conflicts=ids)
    else:
        report.add("swap window", OK, f"open since {swap.window_opened_at:%Y-%m-%d %H:%M} UTC: the previous table is "
                   "in step, `alembic downgrade -1` is an exchange back; `reserve swap finish` closes it")


def verify(url: URL) -> Report:
    """Drift, guard validity, zero overlaps, and the probe's plan; raises db.ConnectionFailed (exit 2)."""
    report = Report("verify")
    with db.connect(url, autocommit=True) as conn:
        current = revisions.current_revision(conn)
        report.facts.update({"database": db.masked(url), "revision": current or "none"})
        if current is None:
            report.add("revision", FAIL, "no alembic_version: this database is not managed by reserve-migrations")
            return report
        leftovers = catalog.pending_indexes(conn)
        live = catalog.snapshot(conn)
        swap = swap_state.read(conn)
        found = expectations.differences(current, live)
        between = unfinished.identify(current, live, leftovers, swap) if (found or swap) else None
        left = expectations.machinery_left(current, live) if swap is not None and not found else None
        if left == expectations.WINDOW and swap is not None and swap.phase == swap_state.WINDOW:
            check_window(report, conn, swap)
        elif left == expectations.RETIRED:
            report.add("retired table", WARN, f"the rollback of {unfinished.SWAP_REVISION} left the table it replaced "
                       f"in {swap_state.SHADOW} (dropping it needs a brief ACCESS EXCLUSIVE on bookings and "
                       "restaurants): `reserve swap finish` drops it; nothing depends on it")
        elif left == expectations.CLOSING:
            report.add("retired table", WARN, "an interrupted `reserve swap finish` left the previous table in "
                       f"{swap_state.SHADOW}, out of step (its capture is gone; the rollback is a rebuild): "
                       "`reserve swap finish` drops it; nothing depends on it")
        if between is not None:
            report.add("catalog", FAIL, f"between revisions: {between}", left=between.left,
                       command=between.command, alternative=between.alternative, differences=[str(d) for d in found])
        else:
            if leftovers:
                report.add("leftovers", WARN, f"{', '.join(leftovers)} left by an interrupted rollback: rerun "
                           "`alembic downgrade -1` to finish it, or DROP INDEX CONCURRENTLY it", indexes=leftovers)
            report.add("catalog", FAIL if found else OK,
                       "; ".join(map(str, found[:10])) if found else f"matches {current}",
                       differences=[str(d) for d in found])
        guard = next((g for g in (guards.NEW_GUARD, guards.OLD_GUARD) if guards.is_in_place(conn, g)), None)
        if guard is None:
            report.add("guard", FAIL, "no valid overlap guard on allocations")
            return report
        pairs = guards.find_violations(conn, guard)
        report.add("overlaps", FAIL if pairs else OK,
                   f"{len(pairs)} overlapping pair(s): {pairs}" if pairs else f"no live overlaps under {guard.name}")
        params = probes.sample_parameters(conn)
        if params["restaurant_id"] is None:
            report.add("probe plan", OK, "no allocations to probe")
            return report
        plan = probes.plan(conn, probes.RESTAURANT_SCOPED, params)
        index = guard.name
        # Below head the redundant GiST index (resource_id, "window") serves the probe as well as the old guard's
        # does, and which of the two the planner takes depends on the statistics of the moment.
        serving = (index, guards.REDUNDANT_INDEX) if guard is guards.OLD_GUARD else (index,)
        used = next((name for name in serving if probes.uses_index(plan, name)), None)
        if used is not None:
            report.add("probe plan", OK, f"the restaurant-scoped overlap probe uses the GiST index {used}"
                       + (f" (redundant with {index}: the planner's choice)" if used != index else ""), plan=plan)
            return report
        # A small table is cheaper to scan: show that the index serves the probe when a scan is not an option.
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            forced = probes.plan(conn, probes.RESTAURANT_SCOPED, params)
        used = next((name for name in serving if probes.uses_index(forced, name)), None)
        if used is not None:
            report.add("probe plan", OK, f"the restaurant-scoped overlap probe can use the GiST index {used} "
                       "(the planner scans this small table instead)", plan=forced)
            return report
        rows = conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]
        if rows < TOO_FEW_ROWS_TO_JUDGE:
            report.add("probe plan", WARN, f"only {rows} allocations: too few for the plan to say anything", plan=forced)
        else:
            report.add("probe plan", FAIL, f"the restaurant-scoped overlap probe does not use the GiST index {index}",
                       plan=forced)
    return report
