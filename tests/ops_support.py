"""What the operations tests (flags, confirm client, monitor, retention, analysis, the swap's replay job) share:
aged evidence, and a server of their own that loads pg_cron."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from reserve import db
from reserve.rollout.ephemeral import EphemeralPostgres, find_bindir, pg_cron_settings
from tests.support import Database, Venue, confirm, slot


def pg_cron_installed() -> bool:
    return (Path("/usr/share/postgresql") / find_bindir().parent.name / "extension" / "pg_cron.control").exists()


@contextmanager
def pg_cron_database(name: str, revision: str) -> Iterator[Database]:
    """A throw-away server that loads pg_cron for database ``name``, that database at ``revision`` with the
    extension created (skipped where pg_cron is not installed; required in CI)."""
    if not pg_cron_installed():
        assert not os.environ.get("CI"), "pg_cron is required in CI: `make test` installs postgresql-15-cron"
        pytest.skip("pg_cron is not installed (Debian postgresql-15-cron; make installs it)")
    with EphemeralPostgres(settings=pg_cron_settings(name)) as server:
        with db.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        target = Database(name, server.url(name))
        target.upgrade(revision)
        with target.connect(autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_cron")
        yield target


def aged_evidence(conn: psycopg.Connection, venue: Venue, count: int, age: timedelta, first_slot: int) -> None:
    """``count`` confirmations of ``venue`` whose evidence row and 'miss' cache event are ``age`` old."""
    for i in range(count):
        window = slot(first_slot + 3 * i)
        booking = venue.booking(window)
        key = f"k{first_slot + i}"
        confirm(conn, venue.hold([venue.tables[0]], window), booking, key=key)
        conn.execute("UPDATE booking_confirmation_results SET checked_at = now() - %s WHERE booking_id = %s",
                     (age, booking))
        conn.execute(
            "INSERT INTO confirmation_cache_events (restaurant_id, booking_id, idempotency_key, outcome, recorded_at) "
            "VALUES (%s, %s, %s, 'miss', now() - %s)", (venue.id, booking, key, age))


def with_aged_evidence(db: Database, old: int = 3, recent: int = 2) -> Database:
    """Two venues, each with ``old`` confirmations 40 days old and ``recent`` ones ten minutes old."""
    with db.connect() as conn:
        for name in ("A", "B"):
            venue = Venue(conn, name)
            aged_evidence(conn, venue, old, timedelta(days=40), 24)
            aged_evidence(conn, venue, recent, timedelta(minutes=10), 24 + 3 * old + 10)
        conn.commit()
    return db
