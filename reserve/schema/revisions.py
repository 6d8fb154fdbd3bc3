"""The revision chain: where it lives, its order, its head, where a database stands in it, and its Alembic config.

One place for where the chain is (``alembic_ini``) and for the order of the
revisions (Alembic's own ``walk_revisions``), used by everything that must
know what comes after what: preflight's steps, ``-1`` as ``alembic downgrade
-1`` means it, the expected catalogs, the tests.

The repository keeps ``alembic.ini`` and ``alembic/`` at its top level; a wheel
carries the same two as ``reserve/_chain/`` (setup.py's build step), so the
ini's ``script_location = %(here)s/alembic`` holds in both.
"""

from __future__ import annotations

import io
from argparse import Namespace
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from reserve.report import UsageError

# The revision that swaps allocations' guard: the one step with two methods (locked, online) and the online
# swap's machinery. Named once; every module that treats it apart reads it from here.
SWAP_REVISION = "0004_allocations_no_overlap"

_PACKAGE = Path(__file__).resolve().parent.parent
# An installed wheel's copy first, then a checkout's (an editable install, or the source tree on sys.path).
_CANDIDATES = (_PACKAGE / "_chain" / "alembic.ini", _PACKAGE.parent / "alembic.ini")


class ChainNotFound(UsageError):
    """This copy of the package has no Alembic chain beside it."""


def alembic_ini() -> Path:
    """The alembic.ini of this package's own chain (``reserve config-path`` prints it); ChainNotFound (exit 2)
    when neither the wheel's copy nor a checkout's is there."""
    for ini in _CANDIDATES:
        if ini.is_file() and (ini.parent / "alembic" / "env.py").is_file():
            return ini
    raise ChainNotFound(f"the Alembic chain of this reserve ({_PACKAGE}) is missing: neither "
                        f"{' nor '.join(str(ini) for ini in _CANDIDATES)} (with alembic/ beside it) exists; "
                        "install a wheel built from the repository (pip install <checkout> or pip wheel <checkout>)")


def config(url: URL | None = None, *, x: list[str] | None = None, output: io.StringIO | None = None) -> Config:
    """An Alembic config for ``url``; ``x`` holds ``-x name=value`` options."""
    cfg = Config(str(alembic_ini()), output_buffer=output, cmd_opts=Namespace(x=x or []))
    if url is not None:
        cfg.attributes["database_url"] = url.render_as_string(hide_password=False)
    cfg.attributes["configure_logger"] = False
    return cfg


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


def failing_step(start: str | None, target: str | None, now: str | None) -> tuple[str | None, str]:
    """(the revision a failed run stopped in, direction), from where it started, where it was going and what
    alembic_version records now: each step commits on its own, so the first step not reflected there is the one
    that failed (its own code, its version-table update or its commit). (None, direction) when ``now`` is not on
    the way (the database moved meanwhile)."""
    direction, moving = steps(start, target)
    order = [None, *chain()]
    after = [start, *(step if direction == "upgrade" else order[order.index(step) - 1] for step in moving)]
    if now not in after or after.index(now) >= len(moving):
        return None, direction
    return moving[after.index(now)], direction


def current_revision(conn) -> str | None:
    """The revision recorded in alembic_version, or None when the table is absent or empty."""
    if not conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]:
        return None
    row = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
    return row[0] if row else None
