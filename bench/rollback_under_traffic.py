"""The emergency rollback while a long report and a REPEATABLE READ transaction run: how soon the guard is back.

    python -m bench.rollback_under_traffic --rows 100000

On a throw-away server (fsync on): the schema at head with generated data;
an analytics query (a plain SELECT on bookings, no lock on allocations) and a
REPEATABLE READ transaction are open; then `alembic downgrade -1` runs as an
operator runs it. Prints when the old guard was back (committed, seen from
another session), whether the command was still waiting for the index build
while the report ran, and how soon it finished once they ended. Before this
design the same rollback failed after 5 s with a lock timeout.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import guards, revisions


@contextmanager
def snapshot_holding_report(url: URL, seconds: float) -> Iterator[tuple[int, threading.Event]]:
    """An analytics query running for up to ``seconds`` in a thread: a plain SELECT on bookings that holds a
    snapshot and no lock on allocations. Yields its pid and an event set when it ends; canceled on exit."""
    pid: list[int] = []
    done = threading.Event()

    def report() -> None:
        with db.connect(url, autocommit=True, application_name="analytics") as conn:
            pid.append(conn.info.backend_pid)
            try:
                conn.execute(f"SELECT count(*), pg_sleep({seconds}) FROM bookings")
            except psycopg.errors.QueryCanceled:
                pass
            finally:
                done.set()

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    while not pid and thread.is_alive():
        time.sleep(0.01)
    try:
        yield pid[0], done
    finally:
        with db.connect(url, autocommit=True) as dba:
            dba.execute("SELECT pg_cancel_backend(%s)", (pid[0],))
        thread.join(timeout=10)


def measure(rows: int, report_s: float) -> dict[str, float | bool | str | None]:
    with EphemeralPostgres(fsync=True) as server:
        url = server.url()
        alembic_runner.upgrade(url, "head")
        with db.connect(url, autocommit=True) as conn:
            dataset.generate(conn, dataset.Shape.for_rows(rows))
            conn.execute("VACUUM ANALYZE")
        with snapshot_holding_report(url, report_s * 3) as (report_pid, _), \
                db.connect(url, application_name="finance-export") as snapshot, \
                db.connect(url, autocommit=True) as dba:
            snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            snapshot.execute("SELECT count(*) FROM restaurants")
            started = time.monotonic()
            proc = alembic_runner.start_cli(url, "downgrade", "-1")
            while not guards.is_in_place(dba, guards.OLD_GUARD) and proc.poll() is None:
                time.sleep(0.02)
            restored_s = time.monotonic() - started
            time.sleep(max(0.0, report_s - restored_s))
            waiting = proc.poll() is None
            snapshot.rollback()
            dba.execute("SELECT pg_cancel_backend(%s)", (report_pid,))
            released = time.monotonic()
            proc.communicate(timeout=600)
            return {"rows": rows, "guard_restored_s": round(restored_s, 2), "report_s": report_s,
                    "still_waiting_for_the_index_while_the_report_ran": waiting,
                    "finished_after_they_ended_s": round(time.monotonic() - released, 2),
                    "exit_code": proc.returncode, "ended_at": revisions.current_revision(dba)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollback_under_traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="allocations (default 100000)")
    parser.add_argument("--report-seconds", type=float, default=20.0, help="how long the report keeps running")
    args = parser.parse_args(argv)
    for key, value in measure(args.rows, args.report_seconds).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
