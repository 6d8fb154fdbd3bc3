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

from reserve import db
from reserve.rollout import alembic_runner
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import catalog, revisions


def write_all(target: Path) -> list[Path]:
    """Write ``<target>/<revision>.txt`` for every revision of the chain; the files written, in order."""
    target.mkdir(exist_ok=True)
    written = []
    with EphemeralPostgres() as server:
        url = server.url()
        for revision in revisions.chain():
            alembic_runner.upgrade(url, revision)
            with db.connect(url) as conn:
                path = target / f"{revision}.txt"
                path.write_text(catalog.as_text(catalog.snapshot(conn)), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.expected", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    for path in write_all(Path(str(resources.files("reserve.schema") / "expected"))):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
