"""``reserve analyze confirmations``: the data behind "unique constraint on booking_id?", and the cache hit rate.

booking_confirmation_results is keyed by (booking_id, idempotency_key):
confirm_hold_assignment_tx v12 upserts on that key. A booking gets a second
evidence row when it is confirmed again under a new key; the analysis counts
those bookings and sorts them by why:

- ``reassigned``: a different table set (the party was moved or re-seated);
- ``rescheduled``: the same tables, a different window;
- ``repeated``: the same tables and window every time, i.e. a client retried
  with a fresh key instead of reusing its own (which would have been a cache hit).

The recommendation does not depend on the counts (they only add evidence): a
UNIQUE (booking_id) would make every re-assignment fail inside the
confirmation with 23505 and roll it back, so it is not added (docs/OPERATIONS.md).
Ids and counts only; no personal data.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import OK, WARN, Report

SAMPLE = 10
CATEGORIES = ("reassigned", "rescheduled", "repeated")

_PER_BOOKING = """
WITH per_booking AS (
  SELECT booking_id, count(*) AS n,
         count(DISTINCT table_ids) AS table_sets,
         count(DISTINCT assignment_window) AS windows,
         count(DISTINCT (table_ids, assignment_window)) AS assignments
  FROM public.booking_confirmation_results
  GROUP BY booking_id
), classified AS (
  SELECT booking_id, n,
         CASE WHEN n = 1 THEN NULL
              WHEN table_sets > 1 THEN 'reassigned'
              WHEN windows > 1 THEN 'rescheduled'
              ELSE 'repeated' END AS why
  FROM per_booking
)
SELECT why, count(*), COALESCE(sum(n), 0), COALESCE(max(n), 0),
       (array_agg(booking_id::text ORDER BY n DESC, booking_id))[1:%(sample)s]
FROM classified GROUP BY why
"""

_CACHE = """
SELECT count(*) FILTER (WHERE outcome = 'hit' AND recorded_at > now() - interval '7 days'),
       count(*) FILTER (WHERE outcome = 'miss' AND recorded_at > now() - interval '7 days'),
       count(*) FILTER (WHERE outcome = 'hit'), count(*) FILTER (WHERE outcome = 'miss'),
       min(recorded_at)
FROM public.confirmation_cache_events
"""

RECOMMENDATION = (
    "do not add UNIQUE (booking_id): keep (booking_id, idempotency_key) as the key. A booking confirmed again "
    "under a new key (re-seated or moved) would hit 23505 inside confirm_hold_assignment_tx and the whole "
    "confirmation would roll back; lookups by booking are already served by the primary key's leading column, "
    "and the latest evidence of a booking is the row with the highest checked_at"
)


def analyze(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The numbers, as a dict (ids and counts only). Run as the table owner: RLS would show one venue."""
    result: dict[str, Any] = {"evidence_table": db.table_exists(conn, "public.booking_confirmation_results")}
    if result["evidence_table"]:
        groups = {why: (bookings, rows, most, sample)
                  for why, bookings, rows, most, sample in conn.execute(_PER_BOOKING, {"sample": SAMPLE})}
        single = groups.get(None, (0, 0, 0, []))
        multi = {why: groups.get(why, (0, 0, 0, [])) for why in CATEGORIES}
        result.update({
            "bookings": single[0] + sum(g[0] for g in multi.values()),
            "evidence_rows": single[1] + sum(g[1] for g in multi.values()),
            "bookings_with_several_rows": sum(g[0] for g in multi.values()),
            "most_rows_for_one_booking": max([single[2], *(g[2] for g in multi.values())]),
            "why": {why: {"bookings": g[0], "rows": g[1], "sample_booking_ids": list(g[3] or [])}
                    for why, g in multi.items()},
        })
    result["cache_table"] = db.table_exists(conn, "public.confirmation_cache_events")
    if result["cache_table"]:
        hits_7d, misses_7d, hits, misses, since = conn.execute(_CACHE).fetchone()
        result["cache"] = {
            "hits_7d": hits_7d, "misses_7d": misses_7d,
            "hit_ratio_7d": hits_7d / (hits_7d + misses_7d) if hits_7d + misses_7d else None,
            "hits": hits, "misses": misses, "hit_ratio": hits / (hits + misses) if hits + misses else None,
            "since": since.isoformat() if since else None,
        }
    result["recommendation"] = RECOMMENDATION
    return result


def confirmations(url: URL) -> Report:
    """``reserve analyze confirmations`` as a report; raises db.ConnectionFailed (exit 2)."""
    report = Report("analyze confirmations")
    with db.connect(url, autocommit=True) as conn:
        data = analyze(conn)
    report.facts["database"] = db.masked(url)
    if not data["evidence_table"]:
        report.add("evidence", WARN, "booking_confirmation_results does not exist at this revision")
    else:
        report.facts.update({k: data[k] for k in ("bookings", "evidence_rows", "bookings_with_several_rows",
                                                  "most_rows_for_one_booking")})
        several = data["bookings_with_several_rows"]
        report.add("bookings with more than one evidence row", OK,
                   f"{several} of {data['bookings']} bookings" + (
                       ": " + ", ".join(f"{g['bookings']} {why}" for why, g in data["why"].items()) if several else ""),
                   why=data["why"])
        repeated = data["why"]["repeated"]["bookings"]
        if repeated:
            report.add("retries under a fresh key", WARN,
                       f"{repeated} booking(s) confirmed again with the same tables and window under a new key: "
                       "clients should retry with their original idempotency key (a cache hit, no second write)",
                       sample_booking_ids=data["why"]["repeated"]["sample_booking_ids"])
    if data["cache_table"]:
        c = data["cache"]
        ratio = "n/a" if c["hit_ratio_7d"] is None else f"{c['hit_ratio_7d']:.1%}"
        report.add("cache hit rate", OK, f"last 7 days: {ratio} ({c['hits_7d']} hits, {c['misses_7d']} misses); "
                   f"all time: {c['hits']} hits, {c['misses']} misses", **c)
    report.add("recommendation", OK, data["recommendation"])
    return report
