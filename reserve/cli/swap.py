"""``reserve swap``: the online swap of the allocations guard, seen, kept in step and closed deliberately."""

from __future__ import annotations

from typing import Any

import click

from reserve.cli.shell import json_option, run_report, url_from_env


@click.group()
def swap() -> None:
    """The online swap of the allocations guard: its window (the previous table kept in step after an online
    upgrade, so that `alembic downgrade -1` is an exchange back), seen and closed deliberately."""


def _swap_window() -> Any:
    """reserve.operations.swap_window, imported when a swap command runs (the CLI starts without it)."""
    from reserve.operations import swap_window

    return swap_window


@swap.command("status")
@click.option("--probe-writes", default=200, show_default=True, type=click.IntRange(min=0),
              help="Single-row inserts (rolled back) that measure the capture's write overhead on allocations "
                   "(SHARE ROW EXCLUSIVE for the probe, 100 ms lock_timeout); 0 skips it.")
@json_option
def swap_status(probe_writes: int, as_json: bool) -> None:
    """Whether the rollback is an instant exchange back, since when, the log's depth and lag, conflicts, costs."""
    url = url_from_env()
    run_report(lambda: _swap_window().status(url, probe_writes=probe_writes), as_json)


wait_option = click.option(
    "--wait", "wait_s", default=30.0, show_default=True, type=click.FloatRange(min=0),
    help="Seconds to wait for another run (alembic, another `reserve swap`) holding the migration lock; then exit 1 "
         "naming it, with nothing changed.")


@swap.command("finish")
@wait_option
@json_option
def swap_finish(wait_s: float, as_json: bool) -> None:
    """Close the window after the observation period: drop the capture and the previous table (idempotent)."""
    url = url_from_env()
    run_report(lambda: _swap_window().finish(url, wait_s=wait_s), as_json)


@swap.command("follow")
@click.option("--interval", "interval_s", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between two replays of the change log.")
@click.option("--rounds", default=None, type=click.IntRange(min=1), help="Stop after this many rounds.")
@json_option
def swap_follow(interval_s: float, rounds: int | None, as_json: bool) -> None:
    """Keep the previous table in step without pg_cron: replay the change log until the window closes (or --rounds)."""
    url = url_from_env()
    run_report(lambda: _swap_window().follow(url, interval_s=interval_s, rounds=rounds,
                                    progress=None if as_json else lambda line: click.echo(line, err=True)), as_json)


@swap.command("abort")
@wait_option
@json_option
def swap_abort(wait_s: float, as_json: bool) -> None:
    """Drop an online swap that has not exchanged yet (its shadow and capture); the live table is untouched."""
    url = url_from_env()
    run_report(lambda: _swap_window().abort(url, wait_s=wait_s), as_json)
