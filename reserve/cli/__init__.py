"""The ``reserve`` command. Each subcommand is a thin shell over a library function.

Exit codes: 0 go / as expected, 1 no-go / drift / a failed step (every reason
listed), 2 usage or connection error. Nothing here prints a password.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from reserve import __version__, db
from reserve.cli.shell import fail_usage, failures_reported, json_option, run_report, terminal_width, url_from_env
from reserve.cli.swap import swap
from reserve.schema.options import DEFAULT_SWAP_METHOD, SWAP_METHODS


@click.group(name="reserve", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reserve")
def main() -> None:
    """Roll out the capacity-overlap change safely: check, rehearse, verify.

    Every command reads DATABASE_URL. Exit codes: 0 go / as expected,
    1 no-go / drift / a failed step, 2 usage or connection error.
    """


swap_method_option = click.option(
    "--swap-method", type=click.Choice(SWAP_METHODS), default=None,
    help=f"The method 0004 runs with (alembic -x swap_method=...): {DEFAULT_SWAP_METHOD} when not given (online "
         "always while an online swap is in flight or its window is open), or locked (in place, under the lock).")


@main.command()
@click.option("--target", default="head", show_default=True,
              help="Revision to move to (upgrade or downgrade); -1 is what `alembic downgrade -1` undoes.")
@click.option("--backup-confirmed", is_flag=True, help="The operator confirms a backup / PITR exists.")
@click.option("--long-transaction-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0))
@swap_method_option
@json_option
def preflight(target: str, backup_confirmed: bool, long_transaction_seconds: float, swap_method: str,
              as_json: bool) -> None:
    """Go / no-go for moving DATABASE_URL to --target."""
    from reserve.rollout.preflight import preflight as run

    url = url_from_env()
    run_report(lambda: run(url, target, backup_confirmed=backup_confirmed, long_transaction_s=long_transaction_seconds,
                     swap_method=swap_method), as_json)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def snapshot(output: Path | None) -> None:
    """The catalog state of DATABASE_URL, its revision and row counts (ids and counts only)."""
    from reserve.rollout.snapshots import capture

    url = url_from_env()
    with failures_reported(), db.connect(url, autocommit=True) as conn:
        text = capture(conn)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail_usage(f"cannot write {output}: {exc.strerror}")
    click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def diff(before: Path, after: Path) -> None:
    """Unified diff of two snapshots. Exit 0 when equal, 1 when they differ."""
    from reserve.rollout.snapshots import diff as unified

    text = unified(before.read_text(encoding="utf-8"), after.read_text(encoding="utf-8"), str(before), str(after))
    click.echo(text or "snapshots are identical", nl=not text)
    sys.exit(1 if text else 0)


@main.command()
@json_option
def verify(as_json: bool) -> None:
    """DATABASE_URL matches what its revision promises; the guard serves the overlap probe."""
    from reserve.rollout.verify import verify as run

    url = url_from_env()
    run_report(lambda: run(url), as_json)


@main.command()
@json_option
def adopt(as_json: bool) -> None:
    """Stamp an existing baseline database as 0001_baseline, after proving it is one."""
    from reserve.rollout.adopt import adopt as run

    url = url_from_env()
    run_report(lambda: run(url), as_json)


@main.command("access")
@json_option
def access_matrix(as_json: bool) -> None:
    """Who may do what in DATABASE_URL's public schema: privileges, RLS and the policies that apply, per role."""
    from reserve.rollout import access

    url = url_from_env()
    if as_json:
        run_report(lambda: access.report(url), as_json)
        return
    with failures_reported(), db.connect(url, autocommit=True) as conn:
        click.echo(access.as_text(access.matrix(conn)), nl=False)


@main.command()
@click.option("--rows", default=None, type=click.IntRange(min=1000), help="Allocations in the generated dataset.")
@click.option("--out", "out_dir", default="artifacts", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where artifacts/<timestamp>/ goes.")
@click.option("--use-database-url", is_flag=True,
              help="Rehearse on the server of DATABASE_URL (in a new database) instead of a throw-away server.")
@click.option("--standby", is_flag=True,
              help="Also start a hot standby of the throw-away server and report, per step, what its readers saw "
                   "(replay lag, the longest read, cancellations). Not with --use-database-url (exit 2).")
@swap_method_option
@json_option
def rehearse(rows: int | None, out_dir: Path, use_database_url: bool, standby: bool, swap_method: str,
             as_json: bool) -> None:
    """Rehearse the whole rollout on a throw-away database and write the evidence bundle."""
    from reserve.rollout import rehearsal

    url = url_from_env() if use_database_url else None
    with failures_reported():
        result = rehearsal.rehearse(url, rows=rows or rehearsal.DEFAULT_ROWS, out_dir=out_dir, progress=not as_json,
                                    swap_method=swap_method or DEFAULT_SWAP_METHOD, standby=standby)
    summary: dict[str, Any] = result.summary
    click.echo(json.dumps(summary, indent=2) if as_json else result.render(width=terminal_width()))
    sys.exit(0 if summary["verdict"] == "go" else 1)


@main.command("config-path")
def config_path() -> None:
    """The alembic.ini of this package's chain, for `alembic -c "$(reserve config-path)" upgrade head` (exit 2: none)."""
    from reserve.schema import revisions

    with failures_reported():
        click.echo(revisions.alembic_ini())


# ---------------------------------------------------------------- after the deploy: flags, monitor, retention, analysis


restaurant_option = click.option(
    "--restaurant", "restaurant_id", type=click.UUID, default=None, metavar="ID",
    help="The venue (restaurants.id). Without it: the global override, for all venues.")
flag_option = click.option("--flag", "key", default="allocator.adjacency_mode", show_default=True,
                           help="Which flag.")


@main.group()
def flags() -> None:
    """Feature flags per venue: allocator.adjacency_mode is connected (default), pairwise or neighbors.

    Resolution: the venue's override > the global override > FEATURE_ALLOCATOR_ADJACENCY_MODE > the default.
    """


@flags.command("list")
@click.option("--flag", "key", default=None, help="Only this flag.")
@restaurant_option
@json_option
def flags_list(key: str | None, restaurant_id: Any, as_json: bool) -> None:
    """Override rows (all, or the venue's and the global ones), with the environment and the default."""
    run_report(lambda: _flags().report_list(url_from_env(), key, restaurant_id), as_json)


@flags.command("get")
@restaurant_option
@flag_option
@json_option
def flags_get(restaurant_id: Any, key: str, as_json: bool) -> None:
    """The value in force for the venue (or for all venues), and where it comes from."""
    run_report(lambda: _flags().report_get(url_from_env(), restaurant_id, key), as_json)


@flags.command("set")
@click.argument("value")
@restaurant_option
@flag_option
@json_option
def flags_set(value: str, restaurant_id: Any, key: str, as_json: bool) -> None:
    """Override the flag with VALUE for the venue (or, without --restaurant, for all venues)."""
    run_report(lambda: _flags().report_set(url_from_env(), value, restaurant_id, key), as_json)


@flags.command("unset")
@restaurant_option
@flag_option
@json_option
def flags_unset(restaurant_id: Any, key: str, as_json: bool) -> None:
    """Remove the venue's (or the global) override; resolution falls back to the next source."""
    run_report(lambda: _flags().report_unset(url_from_env(), restaurant_id, key), as_json)


def _flags() -> Any:
    """reserve.capacity.flags, imported when a flags command runs (the CLI starts without it)."""
    from reserve.capacity import flags as module

    return module


@main.command()
@click.option("--once", is_flag=True, help="Run the monitoring queries once and print them.")
@click.option("--serve", "port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Expose Prometheus metrics on http://127.0.0.1:PORT/metrics until interrupted (0: any free port).")
@click.option("--min-interval", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="--serve: read the database at most this often (seconds), however often scraped.")
@click.option("--probe-runs", default=None, type=click.IntRange(min=0),
              help="Overlap-probe runs per reading [--once: 50, --serve: 5].")
@json_option
def monitor(once: bool, port: int | None, min_interval: float, probe_runs: int | None, as_json: bool) -> None:
    """The 7-day monitoring queries (--once), or a Prometheus exporter of them (--serve PORT).

    --once exits 1 when the overlap guard is missing or allocations overlap.
    """
    import signal
    import threading

    from reserve.operations import monitor as mon

    if once == (port is not None):
        fail_usage("give exactly one of --once or --serve PORT")
    url = url_from_env()
    if once:
        run_report(lambda: mon.once(url, probe_runs=50 if probe_runs is None else probe_runs), as_json,
             render=mon.render_table)
        return
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with failures_reported():
            mon.serve(url, port, min_interval=min_interval, probe_runs=5 if probe_runs is None else probe_runs,
                      ready=click.echo, stop=stop)
    except mon.PortInUse as exc:
        fail_usage(str(exc))
    except OSError as exc:
        fail_usage(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command()
@click.option("--older-than", metavar="DURATION",
              help="Delete evidence older than this, a PostgreSQL interval: 30d, 12h, 2w, '1 day 12 hours' (at least "
                   "1d). Required to purge now; with --schedule, 30d unless given.")
@click.option("--batch-size", default=1000, show_default=True, type=int, help="Rows per batch (one short transaction each).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--pause", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait between batches.")
@click.option("--schedule", "cron_schedule", metavar="CRON",
              help="Instead of purging now, create or update the pg_cron job reserve-retention: one batch per run.")
@click.option("--unschedule", is_flag=True, help="Remove the pg_cron job reserve-retention.")
@json_option
def retention(older_than: str | None, batch_size: int, dry_run: bool, pause: float, cron_schedule: str | None,
              unschedule: bool, as_json: bool) -> None:
    """Delete booking_confirmation_results rows (and cache events) older than --older-than, in batches; or
    schedule that in the database with pg_cron."""
    from reserve.operations import retention as ret
    from reserve.operations import retention_schedule

    if cron_schedule is not None and unschedule:
        fail_usage("give --schedule or --unschedule, not both")
    url = url_from_env()
    if unschedule:
        run_report(lambda: retention_schedule.unschedule(url), as_json)
    elif cron_schedule is not None:
        run_report(lambda: retention_schedule.schedule(url, cron_schedule, older_than or "30d", batch_size=batch_size),
             as_json)
    elif older_than is None:
        fail_usage("--older-than is required (or --schedule / --unschedule)")
    else:
        run_report(lambda: ret.purge(url, older_than, batch_size=batch_size, dry_run=dry_run, pause_s=pause), as_json)


@main.group()
def analyze() -> None:
    """Analyses of production data (ids and counts only)."""


@analyze.command("confirmations")
@json_option
def analyze_confirmations(as_json: bool) -> None:
    """Bookings with more than one evidence row and why, the cache hit rate, and the unique-constraint decision."""
    from reserve.operations.analysis import confirmations

    url = url_from_env()
    run_report(lambda: confirmations(url), as_json)


main.add_command(swap)
