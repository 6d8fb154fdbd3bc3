"""The build step that puts the Alembic chain in the wheel (the rest of the build is pyproject.toml's).

The repository keeps ``alembic.ini`` and ``alembic/`` at its top level, where every Alembic user looks
for them; ``build_py`` copies both into the built package as ``reserve/_chain/``, with the same layout, so
the ini's ``script_location = %(here)s/alembic`` holds in the checkout and in an installed wheel alike.
reserve.schema.revisions.alembic_ini() finds either. An editable install reads the checkout's own files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent
CHAIN = "reserve/_chain"


class BuildPyWithChain(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        ini, scripts = SOURCE / "alembic.ini", SOURCE / "alembic"
        if not ini.is_file() or not (scripts / "env.py").is_file():
            raise SystemExit(f"{ini} and {scripts}/ are missing: the wheel would have no migration chain")
        target = Path(self.build_lib, CHAIN)
        shutil.rmtree(target, ignore_errors=True)  # no revision left over from an earlier build
        shutil.copytree(scripts, target / "alembic", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(ini, target / "alembic.ini")


setup(cmdclass={"build_py": BuildPyWithChain})
