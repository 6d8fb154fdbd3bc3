"""The command: ``python -m tools.soak`` (what ``make soak`` runs).

Why a module of its own: the options, the scratch database and the exit codes
(0 ok, 1 an invariant broke, 2 the soak could not start) are the operator's
interface; ``tools.soak.run`` stays callable from tests without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reserve import db
from reserve.report import EXIT_NO_GO, EXIT_OK, EXIT_USAGE, UsageError
from reserve.rollout.ephemeral import ServerError
from reserve.rollout.scratch import scratch_database
from tools.soak.run import BEFORE_HEAD, harden, prepare, run_soak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak",
        description="Run upgrade head / downgrade -1 / upgrade head under live confirmations and check the invariants. "
                    "Uses a new scratch database on the (loopback) server of DATABASE_URL, else a throw-away server.")
    parser.add_argument("--workers", type=int, default=4, help="confirming worker processes (default 4)")
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="length of each quiet phase (default 10)")
    parser.add_argument("--rows", type=int, default=100_000, help="generated allocation rows (default 100000)")
    parser.add_argument("--overlap-every", type=int, default=10, help="one hold in N overlaps on purpose (default 10)")
    parser.add_argument("--max-calls", type=int, default=1_000_000, help="upper bound of calls per worker")
    parser.add_argument("-x", dest="alembic_x", action="append", default=[], metavar="NAME=VALUE",
                        help="alembic -x option for every step, e.g. -x swap_lock_timeout=2s (repeatable)")
    parser.add_argument("--hostile-sessions", action="store_true",
                        help="every session REPEATABLE READ by default, FORCE ROW LEVEL SECURITY on allocations, the "
                             "schema owned by a deploy role that is not a superuser (tools.soak.run.harden)")
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    try:
        url = db.sqlalchemy_url() if os.environ.get(db.ENV_VAR) else None
        with scratch_database(url, "reserve_soak", local_only=True) as target:
            print(f"preparing {args.rows} rows at {BEFORE_HEAD} …", file=sys.stderr)
            prepare(target, args.rows)
            migrate_url = harden(target) if args.hostile_sessions else None
            result = run_soak(target, migrate_url=migrate_url, workers=args.workers, phase_seconds=args.phase_seconds,
                              overlap_every=args.overlap_every, max_calls_per_worker=args.max_calls,
                              alembic_x=args.alembic_x)
    # UsageError: SoakSetupError, DatabaseUrlError, ConnectionFailed, ScratchDatabaseError (e.g. not on this machine).
    except (UsageError, ServerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.render())
    if args.out:
        args.out.write_text(result.to_json() + "\n", encoding="utf-8")
    return EXIT_OK if result.ok else EXIT_NO_GO


if __name__ == "__main__":
    sys.exit(main())
