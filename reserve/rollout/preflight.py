"""Preflight: everything the checklist checked by hand before touching the database.

For the step from the database's current revision to a target (head by
default), upgrade or downgrade: who and where, extensions, drift from what
this package expects, data that would break the target's guard (proved from
the catalog when it can be), rows that name another venue's rows (before
0003b's tenant policies), transactions that would make the swap wait,
the size of allocations and the predicted ACCESS EXCLUSIVE hold, and backups.
Read-only: it takes no lock beyond what plain SELECTs take.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import FAIL, OK, WARN, Report
from reserve.schema import expectations, guards, locks, revisions, tenancy
from reserve.schema.options import DEFAULT_SWAP_METHOD, SWAP_METHODS, effective_swap_method
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import dependents, refusals
from reserve.schema.swap import state as swap_state

SWAP_REVISION = revisions.SWAP_REVISION
REQUIRED_EXTENSIONS = ("btree_gist", "pgcrypto")


REPLICA_LAG_S = 30.0  # a replica further behind replays the swap that much later than the primary


def is_production_looking(url: URL) -> bool:
    """Anything not on this machine is treated as production until the operator says otherwise."""
    return not db.is_local(url)


def preflight(url: URL, target: str = "head", *, backup_confirmed: bool = False,
              long_transaction_s: float = 60.0, swap_method: str | None = None) -> Report:
    """Run every check, for the swap's ``swap_method`` (what ``-x swap_method`` will say to Alembic; None: what
    alembic picks when not told, options.effective_swap_method); raises db.ConnectionFailed or
    revisions.UnknownRevision (exit 2)."""
    if swap_method is not None and swap_method not in SWAP_METHODS:
        raise ValueError(f"swap_method must be one of {', '.join(SWAP_METHODS)}, not {swap_method!r}")
    relative = target.startswith("-")
    target_revision = None if relative else revisions.resolve(target)  # a typo fails before connecting
    report = Report("preflight")
    with db.connect(url, autocommit=True) as conn:
        current = revisions.current_revision(conn)
        swap_method = effective_swap_method(swap_method, swap_state.read(conn) is not None)
        if relative:
            target_revision = revisions.resolve(target, current)
        direction, moving = revisions.steps(current, target_revision)
        report.facts.update({
            "database": db.masked(url),
            "server": conn.execute("SHOW server_version").fetchone()[0],
            "current_revision": current or "none",
            "target_revision": target_revision or "base",
            "step": f"{direction} {' -> '.join(moving)}" if moving else "nothing to do",
            "swap_method": swap_method,
        })
        check_server(conn, report)
        check_extensions(conn, report)
        check_drift(conn, report, current)
        crosses_swap = SWAP_REVISION in moving
        check_guard_data(conn, report, direction if crosses_swap else "none")
        check_tenant_references(conn, report, direction == "upgrade" and tenancy.REVISION in moving)
        steps = [(revision, direction) for revision in moving]
        repointed = repointed_tables(conn) if crosses_swap and swap_method == "online" else locks.REPOINTED_AT_HEAD
        if crosses_swap and swap_method == "online":
            check_online_carry(conn, report)
        check_activity(conn, report, steps, long_transaction_s, swap_method, repointed)
        check_size_and_hold(conn, report, direction if crosses_swap else "none", swap_method)
        check_replicas(conn, report,
                       locks.step_tables(steps, swap_method, repointed).get(guards.TABLE) == "ACCESS EXCLUSIVE")
        check_backup(conn, report, url, backup_confirmed)
    return report


def check_server(conn: psycopg.Connection[Any], report: Report) -> None:
    major = conn.info.server_version // 10000
    if major == db.REFERENCE_MAJOR:
        report.add("server", OK, f"PostgreSQL {major}, the tested version")
    else:
        report.add("server", WARN, f"PostgreSQL {major}; this package is tested on {db.REFERENCE_MAJOR}")


def check_extensions(conn: psycopg.Connection[Any], report: Report) -> None:
    rows = dict(conn.execute(
        "SELECT name, installed_version FROM pg_available_extensions WHERE name = ANY(%s)",
        (list(REQUIRED_EXTENSIONS),),
    ).fetchall())
    missing = [name for name in REQUIRED_EXTENSIONS if name not in rows]
    if missing:
        report.add("extensions", FAIL, f"not available on this server: {', '.join(missing)}")
    else:
        state = ", ".join(f"{n} {'installed' if rows[n] else 'available'}" for n in REQUIRED_EXTENSIONS)
        report.add("extensions", OK, state)


def check_drift(conn: psycopg.Connection[Any], report: Report, current: str | None) -> None:
    if current is None:
        present = conn.execute(
            "SELECT count(*) FROM pg_class WHERE oid IN (to_regclass('public.allocations'), to_regclass('public.bookings'))"
        ).fetchone()[0]
        if present:
            report.add("drift", FAIL, "booking tables exist but no alembic_version: run `reserve adopt` first")
        else:
            report.add("drift", OK, "empty database: nothing to compare")
        return
    found = expectations.drift(conn, current)
    if found:
        report.add("drift", FAIL, f"{len(found)} difference(s) from {current}: " + "; ".join(map(str, found[:10])),
                   differences=[str(d) for d in found])
    else:
        report.add("drift", OK, f"catalog matches {current}")


def check_guard_data(conn: psycopg.Connection[Any], report: Report, direction: str) -> None:
    if direction == "none":
        report.add("guard data", OK, "this step does not change the allocation guard")
        return
    if not conn.execute("SELECT to_regclass('public.allocations')").fetchone()[0]:
        report.add("guard data", OK, "no allocations table yet: the guard is created on an empty table")
        return
    if direction == "upgrade" and guards.is_in_place(conn, guards.OLD_GUARD):
        report.add("guard data", OK, f"proved by the catalog: {guards.OLD_GUARD.name} is valid and implies "
                   f"{guards.NEW_GUARD.name}; no scan needed")
        return
    guard = guards.NEW_GUARD if direction == "upgrade" else guards.OLD_GUARD
    pairs = guards.find_violations(conn, guard)
    if pairs:
        ids = sorted({i for pair in pairs for i in pair})[:20]
        report.add("guard data", FAIL, f"{len(pairs)} overlapping pair(s) would break {guard.name}: {', '.join(ids)}",
                   allocation_ids=ids)
    else:
        report.add("guard data", OK, f"scanned allocations: no rows break {guard.name}")


def check_tenant_references(conn: psycopg.Connection[Any], report: Report, applies: bool) -> None:
    """Rows that already name another venue's rows: 0003b lets them stay, but service_role can no
    longer rewrite them. A warning, not a no-go: the step commits whole either way, and the repair is
    a data decision for the operator, with the ids listed here."""
    if not applies:
        report.add("tenant references", OK, f"this step does not apply {tenancy.REVISION}")
        return
    found = tenancy.find_cross_tenant_rows(conn)
    if not found:
        report.add("tenant references", OK, "scanned: no row names another restaurant's row")
        return
    detail = "; ".join(f"{f.reference}: {f.count} row(s), e.g. {', '.join(f.ids[:5])}" for f in found)
    report.add("tenant references", WARN,
               f"rows naming another restaurant's row; after {tenancy.REVISION} service_role cannot update "
               f"them (42501) until repaired: {detail}",
               rows={f.reference: {"count": f.count, "ids": f.ids} for f in found})


def check_online_carry(conn: psycopg.Connection[Any], report: Report) -> None:
    """What the online method will carry to the new table, and what would make it refuse (before it builds
    anything: reserve.schema.swap.refusals), read from the live catalog as the swap reads it."""
    if not db.table_exists(conn, guards.TABLE):
        return  # an unadopted database: drift says so
    with conn.transaction():
        session = PsycopgSession(conn)
        refused = refusals.find(session)
        found = dependents.find(session)
    if refused:
        report.add("online carry", FAIL, f"the online method would refuse, changing nothing; use "
                   f"{refusals.FALLBACK}: " + "; ".join(refused), refused=refused)
        return
    carried = {
        "foreign keys of other tables": [f"{fk.table}.{fk.name}" + ("" if fk.validated else " (NOT VALID, kept so)")
                                         for fk in found.foreign_keys],
        "policies of other tables": [f"{policy.table}.{policy.name}" for policy in found.policies],
        "views": [view.name + (f" ({', '.join(view.options)})" if view.options else "") for view in found.views],
        "publications": [m.publication + (" (column list)" if m.columns else "") + (" (row filter)" if m.row_filter
                                                                                   else "") for m in found.publications],
        "triggers": [trigger.name for trigger in found.triggers],
    }
    listed = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in carried.items() if names)
    report.add("online carry", OK, "the online method re-points " + (listed or "nothing outside allocations")
               + "; the table's own settings, grants, policies, comments and indexes are copied to the new table",
               carried=carried)


def repointed_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables the online exchange will lock besides allocations, read from the live catalog as the exchange
    reads it (a table that started pointing at allocations since the release is checked too)."""
    if not db.table_exists(conn, guards.TABLE):
        return list(locks.REPOINTED_AT_HEAD)  # an unadopted database: drift says so
    with conn.transaction():
        return dependents.find(PsycopgSession(conn)).tables


def check_activity(conn: psycopg.Connection[Any], report: Report, steps: list[tuple[str, str]], long_s: float,
                   swap_method: str = DEFAULT_SWAP_METHOD,
                   repointed: Iterable[str] = locks.REPOINTED_AT_HEAD) -> None:
    """Sessions whose locks conflict with what the step will take (reserve.schema.locks.DECLARED), and long transactions.

    A conflicting holder makes each of the step's bounded lock attempts time
    out (readers queue behind every attempt meanwhile), so it is a no-go; when
    the step locks nothing, holders on allocations are shown as a warning.
    A long transaction that holds no such lock blocks nothing here: a warning,
    because it holds back vacuum and because the swap's rollback, after it has
    restored the guard, builds its index concurrently and that build waits for
    every older snapshot (blocking nobody).
    """
    wanted = locks.step_tables(steps, swap_method, repointed)
    watched = wanted or {guards.TABLE: "ACCESS EXCLUSIVE"}
    found = locks.holders(conn, watched)
    names = ", ".join(sorted(t.removeprefix("public.") for t in watched))
    if found:
        report.add("lock holders", FAIL if wanted else WARN, "; ".join(h.describe() for h in found),
                   holders=[h.as_dict() for h in found])
    else:
        report.add("lock holders", OK, f"nobody holds a lock that conflicts with this step on {names}")
    long_running = conn.execute(
        "SELECT pid, COALESCE(application_name, ''), state, "
        "       round(extract(epoch FROM clock_timestamp() - xact_start)::numeric, 1)::float8 "
        "FROM pg_stat_activity WHERE xact_start < clock_timestamp() - make_interval(secs => %s) "
        "AND pid <> pg_backend_pid() AND datname = current_database() ORDER BY xact_start",
        (long_s,),
    ).fetchall()
    if not long_running:
        report.add("long transactions", OK, f"none open longer than {long_s:g}s")
        return
    rollback = (SWAP_REVISION, "downgrade") in steps
    effect = ("the rollback restores the guard without waiting for them; its index build afterwards waits for them, "
              "blocking nobody" if rollback else "they block this step only if listed under lock holders")
    report.add("long transactions", WARN,
               "; ".join(f"pid {p} ({app or 'no application_name'}, {state}) open for {age}s"
                         for p, app, state, age in long_running) + f" ({effect})",
               transactions=[{"pid": p, "application": app, "state": state, "xact_s": age}
                             for p, app, state, age in long_running])


def check_size_and_hold(conn: psycopg.Connection[Any], report: Report, direction: str,
                        swap_method: str = DEFAULT_SWAP_METHOD) -> None:
    size = conn.execute(
        "SELECT pg_total_relation_size('public.allocations'), pg_size_pretty(pg_total_relation_size('public.allocations'))"
    ).fetchone() if conn.execute("SELECT to_regclass('public.allocations')").fetchone()[0] else None
    if size is None:
        report.add("allocations size", OK, "no allocations table yet")
        return
    rows = conn.execute("SELECT count(*) FROM public.allocations").fetchone()[0]
    report.facts["allocations_rows"] = rows
    report.add("allocations size", OK, f"{rows} rows, {size[1]}", rows=rows, bytes=size[0])
    if direction == "none":
        report.add("lock hold", OK, "this step takes no ACCESS EXCLUSIVE lock on allocations")
        return
    if any(c.name == "guard data" and c.status == FAIL for c in report.checks):
        report.add("lock hold", WARN, "not predicted: the data would make the swap fail (see guard data)")
        return
    from reserve.rollout import predictor

    try:
        if swap_method == "online":
            check_online_costs(conn, report, direction)
            return
        prediction = predictor.predict_swap_hold(conn, direction)
    except psycopg.Error as exc:
        report.add("lock hold", WARN, f"could not predict the hold: {str(exc).splitlines()[0]}")
        return
    report.facts["predicted_lock_hold_s"] = round(prediction.seconds, 2)
    report.add("lock hold", OK, f"ACCESS EXCLUSIVE on allocations for about {prediction.seconds:.1f}s "
               f"({direction}; locked method; {prediction.method})", predicted_s=prediction.seconds)


def check_online_costs(conn: psycopg.Connection[Any], report: Report, direction: str) -> None:
    """The online method's four costs: the short hold, the background, the disk until the previous table goes,
    the write overhead while the capture runs."""
    from reserve.rollout import predictor
    from reserve.schema.swap import state as swap_state

    found = swap_state.read(conn)
    window = found is not None and found.phase == swap_state.WINDOW
    p = predictor.predict_online(conn, direction, window_open=window)
    report.facts.update({"predicted_lock_hold_s": p.hold_s, "predicted_background_s": round(p.background_s, 1),
                         "predicted_extra_disk_bytes": p.extra_disk_bytes,
                         "predicted_confirm_p95_ratio": p.confirm_p95_ratio})
    report.add("lock hold", OK, f"ACCESS EXCLUSIVE on allocations for under {p.hold_s * 1000:.0f} ms, at the "
               f"exchange ({direction}; online method: catalog work only, whatever the size)", predicted_s=p.hold_s)
    if window:
        report.add("background", OK, "none: the previous table is in step (the window is open), so the rollback "
                   "is an exchange back" + (f"; but {found.conflicts} recorded conflict(s) make it refuse: "
                                            "`reserve swap status` lists them" if found.conflicts else ""))
        return
    held_until = "until `reserve swap finish` closes the window" if direction == "upgrade" else "until the rollback ends"
    report.add("background", OK, f"about {p.background_s:.0f}s of copying that blocks nobody ({p.how})",
               predicted_s=p.background_s)
    pretty = conn.execute("SELECT pg_size_pretty(%s::bigint)", (p.extra_disk_bytes,)).fetchone()[0]
    report.add("extra disk", OK, f"about {pretty} (a second allocations with its indexes), "
               f"held {held_until}", bytes=p.extra_disk_bytes)
    report.add("write overhead", OK, f"while the capture runs, each write to allocations appends its id to the change "
               f"log: confirm p95 about x{p.confirm_p95_ratio:g} (make bench)", ratio=p.confirm_p95_ratio)
    if direction == "upgrade":
        add_replayer(conn, report)


def add_replayer(conn: psycopg.Connection[Any], report: Report) -> None:
    """Who keeps the previous table in step during the window: pg_cron where it is installed, else an operator's
    `reserve swap follow` (without either, the log grows and `alembic downgrade -1` replays it first)."""
    from reserve.schema.swap import changelog

    version = changelog.cron_version(conn)
    if version is not None:
        report.add("window replayer", OK, f"the pg_cron job {changelog.CRON_JOB} ({changelog.cron_schedule(version)}) "
                   "replays the change log into the previous table while the window is open", replayer="pg_cron")
    else:
        report.add("window replayer", OK, "pg_cron is not installed in this database: run `reserve swap follow` "
                   "while the window is open, or the change log grows until the rollback or `reserve swap finish` "
                   "replays it", replayer="reserve swap follow")


def check_replicas(conn: psycopg.Connection[Any], report: Report, applies: bool) -> None:
    """The hot standbys streaming from this server, when the step takes ACCESS EXCLUSIVE on allocations (as
    reserve.schema.locks declares it). That lock (the locked build, the online exchange) is replayed on each:
    there it waits behind any query reading allocations, up to that replica's max_standby_streaming_delay, and
    the replica's reads of allocations queue behind the wait (docs/OPERATIONS.md, section 9). This server
    cannot see a replica's queries: the operator checks them."""
    if not applies:
        report.add("replicas", OK, "this step does not take ACCESS EXCLUSIVE on allocations")
        return
    rows = conn.execute(
        "SELECT COALESCE(NULLIF(application_name, ''), 'standby'), state, "
        "       extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication ORDER BY application_name").fetchall()
    if not rows:
        report.add("replicas", OK, "no hot standby streams from this server")
        return
    behind = replicas_behind(rows)
    listed = "; ".join(f"{name}: {state}, replay lag {'n/a' if lag is None else f'{lag:.1f}s'}"
                       for name, state, lag in rows)
    report.add("replicas", WARN if behind else OK,
               f"{len(rows)} hot standby(s) ({listed}): on each, the swap's lock waits behind any query reading "
               "allocations there, up to its max_standby_streaming_delay, and its booking reads wait as long: "
               "check for long queries on each replica first (docs/OPERATIONS.md, section 9)"
               + (f"; behind or not streaming: {', '.join(behind)}" if behind else ""),
               replicas=[{"name": name, "state": state, "replay_lag_s": lag} for name, state, lag in rows])


def replicas_behind(rows: list[tuple[str, str, float | None]]) -> list[str]:
    """The replicas (name, state, replay lag in s) not streaming, or further behind than REPLICA_LAG_S."""
    return [name for name, state, lag in rows if state != "streaming" or (lag or 0.0) > REPLICA_LAG_S]


def check_backup(conn: psycopg.Connection[Any], report: Report, url: URL, confirmed: bool) -> None:
    settings = dict(conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'wal_level', 'archive_command')"
    ).fetchall())
    archiving = settings.get("archive_mode") in ("on", "always") and settings.get("wal_level") in ("replica", "logical")
    shown = f"archive_mode={settings.get('archive_mode')}, wal_level={settings.get('wal_level')}"
    if archiving:
        report.add("backup", OK, f"WAL archiving is on ({shown}): point-in-time recovery is possible")
    elif confirmed:
        report.add("backup", OK, f"operator confirmed a backup/PITR ({shown} on this server)")
    elif is_production_looking(url):
        report.add("backup", FAIL, f"no WAL archiving visible ({shown}) and no --backup-confirmed for a remote database")
    else:
        report.add("backup", WARN, f"no WAL archiving ({shown}); local database, so not required")
