"""The ``reserve`` command. Each subcommand is a thin shell over a library function.

Exit codes: 0 go / as expected, 1 no-go / drift / a failed step (every reason
listed), 2 usage or connection error. Nothing here prints a password.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import URL

from reserve import __version__, alembic_runner, db
from reserve.report import EXIT_USAGE, Report


def _url() -> URL:
    try:
        return db.sqlalchemy_url()
    except db.DatabaseUrlError as exc:
        raise click.UsageError(str(exc)) from None


def _fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _run(action: Callable[[], Report], as_json: bool) -> None:
    """Run a report-producing library call, print it, exit with its code."""
    try:
        report = action()
    except (db.ConnectionFailed, alembic_runner.UnknownRevision) as exc:
        _fail_usage(str(exc))
        return
    click.echo(report.to_json() if as_json else report.to_text())
    sys.exit(report.exit_code)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reserve")
def main() -> None:
    """Roll out the capacity-overlap change safely: check, rehearse, verify.

    Every command reads DATABASE_URL. Exit codes: 0 go / as expected,
    1 no-go / drift / a failed step, 2 usage or connection error.
    """


@main.command()
@click.option("--target", default="head", show_default=True, help="Revision to move to (upgrade or downgrade).")
@click.option("--backup-confirmed", is_flag=True, help="The operator confirms a backup / PITR exists.")
@click.option("--long-transaction-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0))
@json_option
def preflight(target: str, backup_confirmed: bool, long_transaction_seconds: float, as_json: bool) -> None:
    """Go / no-go for moving DATABASE_URL to --target."""
    from reserve.preflight import preflight as run

    url = _url()
    _run(lambda: run(url, target, backup_confirmed=backup_confirmed, long_transaction_s=long_transaction_seconds),
         as_json)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def snapshot(output: Path | None) -> None:
    """The catalog state of DATABASE_URL, its revision and row counts (ids and counts only)."""
    from reserve.snapshots import capture

    url = _url()
    try:
        with db.connect(url, autocommit=True) as conn:
            text = capture(conn)
    except db.ConnectionFailed as exc:
        _fail_usage(str(exc))
        return
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail_usage(f"cannot write {output}: {exc.strerror}")
    click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def diff(before: Path, after: Path) -> None:
    """Unified diff of two snapshots. Exit 0 when equal, 1 when they differ."""
    from reserve.snapshots import diff as unified

    text = unified(before.read_text(encoding="utf-8"), after.read_text(encoding="utf-8"), str(before), str(after))
    click.echo(text or "snapshots are identical", nl=not text)
    sys.exit(1 if text else 0)


@main.command()
@json_option
def verify(as_json: bool) -> None:
    """DATABASE_URL matches what its revision promises; the guard serves the overlap probe."""
    from reserve.verify import verify as run

    url = _url()
    _run(lambda: run(url), as_json)


@main.command()
@json_option
def adopt(as_json: bool) -> None:
    """Stamp an existing baseline database as 0001_baseline, after proving it is one."""
    from reserve.adopt import adopt as run

    url = _url()
    _run(lambda: run(url), as_json)


@main.command()
@click.option("--rows", default=None, type=click.IntRange(min=1000), help="Allocations in the generated dataset.")
@click.option("--out", "out_dir", default="artifacts", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where artifacts/<timestamp>/ goes.")
@click.option("--use-database-url", is_flag=True,
              help="Rehearse on the server of DATABASE_URL (in a new database) instead of a throw-away server.")
@json_option
def rehearse(rows: int | None, out_dir: Path, use_database_url: bool, as_json: bool) -> None:
    """Rehearse the whole rollout on a throw-away database and write the evidence bundle."""
    from reserve import rehearsal

    url = _url() if use_database_url else None
    try:
        result = rehearsal.rehearse(url, rows=rows or rehearsal.DEFAULT_ROWS, out_dir=out_dir, progress=not as_json)
    except (db.ConnectionFailed, rehearsal.RehearsalSetupError) as exc:
        _fail_usage(str(exc))
        return
    summary: dict[str, Any] = result.summary
    click.echo(json.dumps(summary, indent=2) if as_json else result.render())
    sys.exit(0 if summary["verdict"] == "go" else 1)
