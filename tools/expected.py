"""Regenerate reserve/schema/expected/: the catalog each revision must produce (`make expected`).

    python -m tools.expected

Migrates an empty throw-away database one revision at a time, in chain
order, and writes each revision's catalog snapshot. Run it after changing a
revision; a test fails when a revision changed and its file was not
regenerated.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

from reserve import db
from reserve.rollout import alembic_runner
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import catalog, expectations, revisions
from reserve.schema.session import PsycopgSession
from reserve.schema.swap import state as swap_state
from reserve.schema.swap import teardown

ONLINE = ["swap_method=online"]  # the method that opens a window (said explicitly; locked leaves none)


def write_all(target: Path) -> list[Path]:
    """Write ``<target>/<revision>.txt`` for every revision of the chain, and the swap's two machinery states;
    the files written.

    The swap's revision is written as it stands once its window is closed. The
    open window's machinery (what `reserve swap finish` drops) goes to
    window.txt; what a rollback leaves when it cannot drop the table it
    replaced at once (provoked here by a read of bookings) goes to retired.txt.
    """
    target.mkdir(exist_ok=True)
    written = []
    with EphemeralPostgres() as server:
        url = server.url()
        for revision in revisions.chain():
            alembic_runner.upgrade(url, revision, x=ONLINE)
            with db.connect(url, autocommit=True) as conn:
                if swap_state.read(conn) is not None:
                    written.append(_write(target / f"{expectations.WINDOW}.txt", _machinery(conn)))
                    roll_back_leaving_the_table_retired(url)
                    written.append(_write(target / f"{expectations.RETIRED}.txt", _machinery(conn)))
                    teardown.finish(PsycopgSession(conn), action="tools.expected")
                    alembic_runner.upgrade(url, revision, x=ONLINE)
                    teardown.finish(PsycopgSession(conn), action="tools.expected")
                snap = catalog.snapshot(conn)
            written.append(_write(target / f"{revision}.txt", snap))
    return written


def _machinery(conn: Any) -> catalog.Snapshot:
    return expectations.machinery(catalog.snapshot(conn))


def roll_back_leaving_the_table_retired(url: Any) -> None:
    """`alembic downgrade -1` inside the window while a transaction reads bookings: the exchange back is done,
    the table it replaced cannot be dropped at once and is retired."""
    with db.connect(url) as reader:
        reader.execute("SELECT count(*) FROM public.bookings")
        alembic_runner.downgrade(url, "-1", x=[*ONLINE, "swap_lock_timeout=200ms"])
        reader.rollback()
    with db.connect(url, autocommit=True) as conn:
        found = swap_state.read(conn)
        assert found is not None and found.phase == swap_state.RETIRED, found


def _write(path: Path, snap: catalog.Snapshot) -> Path:
    path.write_text(catalog.as_text(snap), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.expected", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    for path in write_all(Path(str(resources.files("reserve.schema") / "expected"))):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
