"""reserve.db: the URL, its password, and whether the server is on this machine."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from reserve import db
from reserve.rollout.preflight import is_production_looking


@pytest.mark.parametrize(("raw", "local"), [
    ("postgresql://u@127.0.0.1:5432/db", True), ("postgresql://u@127.0.0.2:5432/db", True),
    ("postgresql://u@localhost/db", True), ("postgresql://u@[::1]:5432/db", True),
    ("postgresql:///db?host=/run/postgresql", True),
    ("postgresql://u@db.internal:5432/db", False), ("postgresql://u@10.0.0.5/db", False),
])
def test_a_server_is_local_when_it_is_on_this_machine_and_production_looking_otherwise(raw: str, local: bool):
    url = make_url(raw)
    assert db.is_local(url) is local
    assert is_production_looking(url) is not local  # preflight and the soak ask the same question


def test_the_password_never_shows_in_the_masked_url_or_a_scrubbed_message():
    url = db.sqlalchemy_url("postgresql://deployer:S3cret-Pw@db.internal:5432/bookings")
    assert db.masked(url) == "postgresql://deployer:***@db.internal:5432/bookings"
    assert db.scrub("auth failed for S3cret-Pw", url) == "auth failed for ***"


def test_tool_sessions_wait_for_a_lock_only_so_long_unless_pgoptions_says_otherwise(monkeypatch):
    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert db.session_options() == f"-c lock_timeout={db.TOOL_LOCK_TIMEOUT}"
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=300ms")
    assert db.session_options() == "-c lock_timeout=300ms"
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    assert db.session_options() == f"-c work_mem=64MB -c lock_timeout={db.TOOL_LOCK_TIMEOUT}"
