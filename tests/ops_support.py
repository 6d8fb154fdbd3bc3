"""What the operations tests (flags, confirm client, monitor, retention, analysis) share: aged evidence."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from tests.support import Database, Venue, confirm, slot


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
