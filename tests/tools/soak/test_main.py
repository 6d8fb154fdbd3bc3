"""The command (``python -m tools.soak``): a setup error exits 2 with one line, the password never shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from tools.soak.__main__ import main


def test_a_server_not_on_this_machine_is_refused_with_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DATABASE_URL", "postgresql://soak:s3cret@db.example.com:5432/reserve")
    assert main(["--workers", "1", "--rows", "10"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: refusing to use postgresql://soak:***@db.example.com")
    assert "s3cret" not in err


def test_the_package_runs_as_a_module_with_its_options():
    proc = subprocess.run([sys.executable, "-m", "tools.soak", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--workers", "--phase-seconds", "--rows", "--overlap-every", "--max-calls", "-x", "--out"):
        assert option in proc.stdout
