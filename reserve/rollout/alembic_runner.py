"""Run this package's Alembic chain in-process, against a URL given explicitly.

The URL travels in the Alembic config's attributes, never through the
environment or the ini file, so tools can target any database without
exporting a secret. ``start_cli``/``run_cli`` run the real ``alembic``
command instead, as an operator would (DATABASE_URL in the child's
environment only), for the soak and the fault tests, which must watch,
time, interrupt or kill it.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy.engine import URL

from reserve import db
from reserve.schema.revisions import alembic_ini, config


def _cli(url: URL | str | None, args: tuple[str, ...],
         extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment of an ``alembic`` child. DATABASE_URL is ``url`` (a URL, rendered with its
    password, or a raw string passed exactly as given), or absent when ``url`` is None; ``extra_env`` adds
    variables (RESERVE_EVENTS_FILE: reserve.schema.events)."""
    env = {**{k: v for k, v in os.environ.items() if k != db.ENV_VAR}, **(extra_env or {})}
    if url is not None:
        env[db.ENV_VAR] = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return [sys.executable, "-m", "alembic", "-c", str(alembic_ini()), *args], env


def _as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT unblocked and at its default, as an operator's shell leaves it, so
    that Ctrl-C (SIGINT) interrupts the run whatever the parent's thread blocks or ignores (started from the
    test suite's xdist workers, a child ignored every SIGINT in the full suite, never alone; the cause in the
    parent was not pinned down)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(url: URL | str | None, *args: str, cwd: Path | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``alembic <args>`` against ``url`` (in ``cwd``, else the chain's directory); stdout and stderr merged,
    to be read by the caller."""
    argv, env = _cli(url, args, extra_env)
    return subprocess.Popen(argv, cwd=cwd or alembic_ini().parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_as_from_a_terminal)


def run_cli(url: URL | str | None, *args: str, timeout: float = 300, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``alembic <args>`` against ``url`` (in ``cwd``, else the chain's directory) to the end;
    subprocess.TimeoutExpired after ``timeout``."""
    argv, env = _cli(url, args, extra_env)
    return subprocess.run(argv, cwd=cwd or alembic_ini().parent, env=env, capture_output=True, text=True, timeout=timeout)


def _passing(url: URL, x: list[str] | None, trace: Any, new_guard: Any) -> Any:
    cfg = config(url, x=x)
    if trace is not None:
        cfg.attributes["lock_trace"] = trace
    if new_guard is not None:
        cfg.attributes["new_guard"] = new_guard
    return cfg


def upgrade(url: URL, revision: str = "head", x: list[str] | None = None, *, trace: Any = None,
            new_guard: Any = None) -> None:
    """``alembic upgrade``. ``trace`` (a reserve.schema.locktrace.LockTrace) records the locks of every
    statement; ``new_guard`` (a reserve.schema.guards.Guard) is what the swap installs in this run only
    (the benchmark's proposed key orders), instead of the shipped ``allocations_no_overlap``."""
    command.upgrade(_passing(url, x, trace, new_guard), revision)


def downgrade(url: URL, revision: str, x: list[str] | None = None, *, trace: Any = None,
              new_guard: Any = None) -> None:
    command.downgrade(_passing(url, x, trace, new_guard), revision)


def offline_sql(direction: str, revision_range: str, x: list[str] | None = None) -> str:
    """The script ``alembic <direction> <range> --sql`` writes."""
    out = io.StringIO()
    run = command.upgrade if direction == "upgrade" else command.downgrade
    run(config(output=out, x=x), revision_range, sql=True)
    return out.getvalue()
