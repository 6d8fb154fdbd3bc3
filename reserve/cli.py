"""The ``reserve`` command. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import sys

import click

from reserve import __version__, db


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reserve")
def main() -> None:
    """Roll out the capacity-overlap change safely: check, rehearse, verify.

    Every command reads DATABASE_URL. Exit codes: 0 go / as expected,
    1 no-go / drift / a failed step, 2 usage or connection error.
    """


@main.command()
@click.option(
    "--use-database-url", is_flag=True,
    help="Rehearse on DATABASE_URL (an empty database) instead of a throw-away server.",
)
def rehearse(use_database_url: bool) -> None:
    """Rehearse the rollout end to end and print the report."""
    from reserve.rehearsal import rehearse as run

    url = None
    if use_database_url:
        try:
            url = db.sqlalchemy_url()
        except db.DatabaseUrlError as exc:
            raise click.UsageError(str(exc)) from None
    report = run(url)
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)
