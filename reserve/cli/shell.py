"""The shell every ``reserve`` command runs in: DATABASE_URL read, a report printed, one exit code per failure.

Exit codes: 0 go / as expected, 1 no-go / drift / a failed step (every reason
listed), 2 usage or connection error. Nothing here prints a password.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import psycopg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from reserve import db
from reserve.report import EXIT_USAGE, Report, UsageError
from reserve.schema import failures


def url_from_env() -> URL:
    """DATABASE_URL, or a usage error (exit 2) naming what is wrong with it (never its secret)."""
    try:
        return db.sqlalchemy_url()
    except db.DatabaseUrlError as exc:
        raise click.UsageError(str(exc)) from None


def fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@contextmanager
def failures_reported() -> Iterator[None]:
    """Around every command's library call: one message and a documented exit code for every failure.

    Bad input and an unreachable database (every UsageError) exit 2 with the
    library's message; any other database failure prints one message naming
    the command, the kind of failure, the table and who was in the way
    (reserve.schema.failures), and exits 1, or 2 when the connection was lost or
    the database refused the input. Anything else is a programming error,
    and keeps its traceback.
    """
    try:
        yield
    except UsageError as exc:
        fail_usage(str(exc))
    except (psycopg.Error, DBAPIError) as exc:
        command = click.get_current_context().command_path
        url = url_or_none()
        text = failures.message(command, exc, diagnose=failures.diagnoser(url) if url is not None else None)
        click.echo(f"error: {db.scrub(text, url)}", err=True)
        sys.exit(failures.exit_code(exc))


def terminal_width() -> int | None:
    """The terminal's width when stdout is one (tables wrap to it), else None (nothing wraps: logs, pipes)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def run_report(action: Callable[[], Report], as_json: bool,
         render: Callable[..., str] | None = None) -> None:
    """Run a report-producing library call, print its report, exit with its code."""
    with failures_reported():
        report = action()
    click.echo(report.to_json() if as_json else (render or Report.to_text)(report, width=terminal_width()))
    sys.exit(report.exit_code)


def url_or_none() -> URL | None:
    try:
        return db.sqlalchemy_url()
    except db.DatabaseUrlError:
        return None


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
