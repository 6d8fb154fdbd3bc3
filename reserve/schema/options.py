"""The ``-x`` options and session settings of a run: one reader, defaults in one place.

env.py sets the session settings on the migrating connection; the revisions'
mechanics read the lock options; a step that changes a setting for one long
statement puts it back from here. Every value is checked before any revision
runs (``check_x_options``), so a typo changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from alembic import context
from alembic.util import CommandError

# Session settings of every run, with their defaults (``-x name=value`` overrides each one). env.py sets
# them on the migrating session; a step that changes one for a single statement puts it back from here.
SESSION_DEFAULTS = {
    "lock_timeout": "5s",
    "statement_timeout": "15min",
    "migration_lock_wait": "10min",
    # A client killed mid-build (deploy job timeout, SIGKILL) would otherwise leave its backend
    # building the guard under ACCESS EXCLUSIVE until the statement ends: up to a minute at 1M rows.
    # With this the server notices the dead client within a second and rolls back (PostgreSQL 14+).
    "client_connection_check_interval": "1s",
}
# How long the rollback's concurrent index build may wait for other transactions once the guard is back
# (it blocks no booking meanwhile); 0 waits as long as it takes.
INDEX_BUILD_WAIT = "1h"


def x_option(name: str, default: str) -> str:
    """An ``alembic -x name=value`` option, or its default: the one reader of ``-x``. Outside an Alembic run
    (the `reserve swap` commands share these mechanics) every option has its default."""
    if getattr(context, "_proxy", None) is None:
        return default
    return context.get_x_argument(as_dictionary=True).get(name, default)


def session_setting(name: str) -> str:
    """A session setting of this run (``SESSION_DEFAULTS``), as given with ``-x`` or by default."""
    return x_option(name, SESSION_DEFAULTS[name])


# Every ``-x`` key a run reads: the session settings, and the options below. A key not here is a typo
# (``swap_metod=locked`` would otherwise run the default method): refused before anything runs.
KNOWN_X_OPTIONS = frozenset({*SESSION_DEFAULTS, "index_build_wait", "lock_trace", "swap_method", "swap_batch_rows",
                             "swap_batch_pause", "swap_tail_rows", "swap_snapshot_wait", "swap_lock_timeout",
                             "swap_lock_attempts", "swap_lock_pause"})


class UnknownXOption(CommandError):
    """An ``-x`` key no step reads (a typo): the `alembic` command exits 2 (usage), nothing changed."""


def check_x_options(*, offline: bool) -> None:
    """Fail on an unknown ``-x`` key or a bad value before any revision runs, so that a typo changes nothing.

    Some options are read only by a late step (the lock options by the first
    revision that locks, the index wait by the rollback of the swap): checked
    here, up front. Online the server checks the session settings itself when
    env.py sets them; offline they go into the script unchecked, so here.
    """
    given = context.get_x_argument(as_dictionary=True) if getattr(context, "_proxy", None) is not None else {}
    unknown = sorted(set(given) - KNOWN_X_OPTIONS)
    if unknown:
        raise UnknownXOption(f"unknown -x option(s): {', '.join(unknown)}; nothing was changed. Known: "
                           f"{', '.join(sorted(KNOWN_X_OPTIONS))}")
    LockPolicy.from_x_options()
    duration_option("index_build_wait", INDEX_BUILD_WAIT)
    SwapOptions.from_x_options()
    if offline:
        for name, default in SESSION_DEFAULTS.items():
            duration_option(name, default)


SWAP_METHODS = ("online", "locked")
# The method 0004 runs with when -x swap_method is not given: online (a change log keeps the shadow, one state
# machine moves it, pg_dump sees what the locked method leaves, or it refuses before building anything);
# -x swap_method=locked changes the guard in place.
DEFAULT_SWAP_METHOD = "online"


def effective_swap_method(told: str | None, swap_in_flight: bool) -> str:
    """The method 0004 runs with: what ``-x swap_method`` says; not told, an online swap in flight (or its open
    window) goes on online, as it began (`alembic downgrade -1` in the window is the exchange back), and
    otherwise DEFAULT_SWAP_METHOD. One rule for alembic and for what preflight predicts."""
    if told:
        return told
    return "online" if swap_in_flight else DEFAULT_SWAP_METHOD


@dataclass(frozen=True)
class SwapOptions:
    """How the guard swap runs: ``-x swap_method=online|locked``, and the online backfill's batches.

    Online (DEFAULT_SWAP_METHOD) builds a shadow table with the target guard,
    keeps it in step and exchanges the two under a lock held for catalog work
    only; locked swaps the constraint in place, holding ACCESS EXCLUSIVE while
    PostgreSQL builds its index. Offline scripts always carry the locked method.
    """

    method: str = DEFAULT_SWAP_METHOD
    batch_rows: int = 5000
    batch_pause_s: float = 0.0
    # The exchange takes its lock once the change log holds at most this many rows; it replays the rest under it.
    tail_rows: int = 1000
    # How long the exchange waits for transactions whose snapshot predates the shadow's fill (0: not at all).
    snapshot_wait_s: float = 60.0

    @classmethod
    def from_x_options(cls) -> SwapOptions:
        default = cls()
        method = x_option("swap_method", default.method)
        if method not in SWAP_METHODS:
            raise CommandError(f"invalid -x swap_method={method!r}: give {' or '.join(SWAP_METHODS)}")
        rows = _number_option("swap_batch_rows", default.batch_rows, int)
        pause = _number_option("swap_batch_pause", default.batch_pause_s, float)
        tail = _number_option("swap_tail_rows", default.tail_rows, int)
        wait = _number_option("swap_snapshot_wait", default.snapshot_wait_s, float)
        if rows < 1 or pause < 0 or tail < 0 or wait < 0:
            raise CommandError("swap_batch_rows must be >= 1; swap_batch_pause, swap_tail_rows and "
                               "swap_snapshot_wait (seconds) >= 0")
        return cls(method, rows, pause, tail, wait)


@dataclass(frozen=True)
class LockPolicy:
    """How long one lock attempt may wait, and how often to try.

    Every waiting attempt makes readers of the table queue behind it, so each
    wait is short; the pauses between attempts let that queue drain.
    """

    lock_timeout: str = "2s"
    attempts: int = 5
    pause_s: float = 3.0

    @classmethod
    def from_x_options(cls) -> LockPolicy:
        """Read ``-x swap_lock_timeout=…``, ``-x swap_lock_attempts=…``, ``-x swap_lock_pause=…``.

        A bad value is a CommandError naming the option (env.py reads these before any revision runs,
        so a typo changes nothing).
        """
        default = cls()
        attempts = _number_option("swap_lock_attempts", default.attempts, int)
        pause_s = _number_option("swap_lock_pause", default.pause_s, float)
        if attempts < 1 or pause_s < 0:
            raise CommandError("swap_lock_attempts must be >= 1 and swap_lock_pause >= 0")
        return cls(duration_option("swap_lock_timeout", default.lock_timeout), attempts, pause_s)


def _number_option(name: str, default: float, kind: type) -> Any:
    value = x_option(name, str(default))
    try:
        return kind(value)
    except ValueError:
        raise CommandError(f"invalid -x {name}={value!r}: give a{'' if kind is int else ' decimal'} number, "
                           f"e.g. {default}") from None


# A PostgreSQL time setting: a number with an optional unit (lock_timeout = '2s', '500ms', '10min').
_DURATION = re.compile(r"\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*")


def duration_option(name: str, default: str) -> str:
    """An ``-x`` option holding a PostgreSQL duration; CommandError when it is not one."""
    value = x_option(name, default)
    if not _DURATION.fullmatch(value):
        raise CommandError(f"invalid -x {name}={value!r}: give a PostgreSQL duration, e.g. 2s, 500ms or 10min")
    return value
