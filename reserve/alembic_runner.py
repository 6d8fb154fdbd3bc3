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
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def config(url: URL | None = None, *, x: list[str] | None = None, output: io.StringIO | None = None) -> Config:
    """An Alembic config for ``url``; ``x`` holds ``-x name=value`` options."""
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"), output_buffer=output, cmd_opts=Namespace(x=x or []))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    if url is not None:
        cfg.attributes["database_url"] = url.render_as_string(hide_password=False)
    cfg.attributes["configure_logger"] = False
    return cfg


def _cli(url: URL, args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, db.ENV_VAR: url.render_as_string(hide_password=False)}
    return [sys.executable, "-m", "alembic", *args], env


def start_cli(url: URL, *args: str) -> subprocess.Popen[str]:
    """Start ``alembic <args>`` against ``url``; stdout and stderr merged, to be read by the caller."""
    argv, env = _cli(url, args)
    return subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_cli(url: URL, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``alembic <args>`` against ``url`` to the end; raises subprocess.TimeoutExpired after ``timeout``."""
    argv, env = _cli(url, args)
    return subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def upgrade(url: URL, revision: str = "head", x: list[str] | None = None, *, trace: Any = None) -> None:
    """``alembic upgrade``; ``trace`` (a reserve.locktrace.LockTrace) records the locks of every statement."""
    cfg = config(url, x=x)
    if trace is not None:
        cfg.attributes["lock_trace"] = trace
    command.upgrade(cfg, revision)


def downgrade(url: URL, revision: str, x: list[str] | None = None, *, trace: Any = None) -> None:
    cfg = config(url, x=x)
    if trace is not None:
        cfg.attributes["lock_trace"] = trace
    command.downgrade(cfg, revision)


def offline_sql(direction: str, revision_range: str, x: list[str] | None = None) -> str:
    """The script ``alembic <direction> <range> --sql`` writes."""
    out = io.StringIO()
    run = command.upgrade if direction == "upgrade" else command.downgrade
    run(config(output=out, x=x), revision_range, sql=True)
    return out.getvalue()


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    return scripts().get_current_head()


class UnknownRevision(UsageError, ValueError):
    """A revision name this package does not have."""


def resolve(target: str, current: str | None = None) -> str | None:
    """A revision id for ``target`` ('head', 'base', an id, or ``-N`` below ``current``); None for base.

    ``-1`` is what ``alembic downgrade -1`` undoes, so the rollback's preflight
    is written the same way whatever the chain holds.
    """
    if target.startswith("-") and target[1:].isdigit():
        order = [None, *chain()]
        if current not in order:
            raise UnknownRevision(f"the database is at {current!r}, which this package does not know")
        here = order.index(current) - int(target[1:])
        if here < 0:
            raise UnknownRevision(f"{target} goes below base from {current or 'base'}")
        return order[here]
    if target == "base":
        return None
    if target == "head":
        return head()
    try:
        revision = scripts().get_revision(target)
    except Exception:  # alembic raises several types for bad names
        revision = None
    if revision is None:
        raise UnknownRevision(f"unknown revision {target!r}; known: {', '.join(chain())}")
    return revision.revision


def chain() -> list[str]:
    """Revision ids, oldest first."""
    return [rev.revision for rev in scripts().walk_revisions("base", "heads")][::-1]


def steps(current: str | None, target: str | None) -> tuple[str, list[str]]:
    """Direction ('upgrade', 'downgrade' or 'none') and the revisions applied or undone, in order."""
    order = [None, *chain()]
    if current not in order:
        raise UnknownRevision(f"the database is at {current!r}, which this package does not know")
    here, there = order.index(current), order.index(target)
    if there > here:
        return "upgrade", [r for r in order[here + 1 : there + 1] if r]
    if there < here:
        return "downgrade", [r for r in reversed(order[there + 1 : here + 1]) if r]
    return "none", []


def current_revision(conn) -> str | None:
    """The revision recorded in alembic_version, or None when the table is absent or empty."""
    if not conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]:
        return None
    row = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
    return row[0] if row else None
