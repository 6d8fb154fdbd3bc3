"""The wheel runs on its own: built from the checkout, installed in a fresh virtualenv (its dependencies from the
registry, not the project's editable install), run from a directory outside the repository.

The installed package finds the chain it carries (reserve/_chain/, setup.py's build step); a deploy runs
``alembic -c "$(reserve config-path)" upgrade head``, as README says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from reserve.cli import main
from reserve.report import EXIT_USAGE
from reserve.schema import revisions
from tests.support import REVISIONS, ROOT, Database

pytestmark = pytest.mark.slow  # `make test-slow`: builds the wheel and installs it into fresh virtualenvs


def _run(argv: list[str], *, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class Installed:
    """A virtualenv holding the wheel, and a working directory outside the repository."""

    venv: Path
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment minus anything pointing at the project: the venv's scripts first on PATH."""
        drop = {"PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "ALEMBIC_CONFIG"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **extra}

    def run(self, *argv: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
        return _run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.cwd, env=self.env(**extra),
                    timeout=timeout)


def _checkout_copy(target: Path) -> Path:
    """The files a clone would have (tracked, or new and not ignored), so the build sees no .venv, build/ or
    egg-info of the working copy, and leaves nothing in it."""
    listed = _ok(_run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT))
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("packaging")
    source = _checkout_copy(base / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _ok(_run([*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(source)], timeout=600))
    (wheel,) = (base / "dist").glob("reserve_migrations-*.whl")
    venv = base / "venv"
    # No pip in the venv: the project's pip installs into it (--python), which saves bootstrapping one; pip's
    # cache serves the dependencies after the first run.
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)]))
    _ok(_run([*pip, "--python", str(venv / "bin" / "python"), "install", str(wheel)], timeout=600))
    cwd = base / "elsewhere"
    cwd.mkdir()
    yield Installed(venv, cwd)


def test_in_the_checkout_the_chain_is_the_repositorys_own():
    result = CliRunner().invoke(main, ["config-path"])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == revisions.alembic_ini() == ROOT / "alembic.ini"


def test_without_a_chain_every_command_that_needs_one_exits_2_with_one_message(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(revisions, "_CANDIDATES", (tmp_path / "_chain" / "alembic.ini", tmp_path / "alembic.ini"))
    for argv in (["config-path"], ["preflight"]):
        result = CliRunner(env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}).invoke(main, argv)
        assert result.exit_code == EXIT_USAGE, (argv, result.output)
        assert result.output.startswith("error: the Alembic chain of this reserve"), (argv, result.output)
        assert "Traceback" not in result.output


def test_the_installed_package_is_the_wheel_and_carries_its_chain(installed: Installed):
    site = Path(_ok(installed.run("python", "-c", "import reserve; print(reserve.__file__)")).strip()).parent
    assert site.is_relative_to(installed.venv), site
    ini = Path(_ok(installed.run("reserve", "config-path")).strip())
    assert ini == site / "_chain" / "alembic.ini"
    assert sorted(p.name for p in (ini.parent / "alembic" / "versions").glob("*.py")) == sorted(
        p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))


def test_rehearse_runs_from_the_installed_wheel(installed: Installed):
    out = installed.cwd / "artifacts"
    result = installed.run("reserve", "rehearse", "--rows", "1000", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: GO" in result.stdout
    (bundle,) = out.iterdir()
    assert (bundle / "summary.json").is_file()


def test_a_deploy_runs_alembic_upgrade_head_from_the_installed_wheel(installed: Installed, empty_db: Database):
    url = empty_db.url.render_as_string(hide_password=False)
    ini = _ok(installed.run("reserve", "config-path")).strip()
    _ok(installed.run("alembic", "-c", ini, "upgrade", "head", DATABASE_URL=url))
    assert empty_db.current() == REVISIONS[-1]
    # The same with ALEMBIC_CONFIG set once, as an image's ENV would; reserve finds its chain by itself.
    assert REVISIONS[-1] in _ok(installed.run("alembic", "current", DATABASE_URL=url, ALEMBIC_CONFIG=ini))
    assert "verdict: GO" in _ok(installed.run("reserve", "verify", DATABASE_URL=url))


def test_an_installation_without_its_chain_exits_2_naming_what_is_missing(installed: Installed):
    chain = Path(_ok(installed.run("reserve", "config-path")).strip()).parent
    moved = chain.with_name("_chain.moved")
    chain.rename(moved)
    try:
        for argv in (["reserve", "config-path"], ["reserve", "preflight"]):  # preflight resolves before connecting
            result = installed.run(*argv, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
            assert result.returncode == EXIT_USAGE, (argv, result.stdout, result.stderr)
            assert result.stderr.startswith("error: the Alembic chain of this reserve"), (argv, result.stderr)
            assert str(chain / "alembic.ini") in result.stderr
    finally:
        moved.rename(chain)
