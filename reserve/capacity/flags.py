"""Feature flags kept in ``feature_flag_overrides``: resolve, set, unset, list.

Resolution of a flag for a venue, first match wins:

1. the venue's own override row (``restaurant_id`` = the venue, ``enabled``);
2. the global override row (``restaurant_id`` NULL, ``enabled``);
3. the environment variable (``FEATURE_ALLOCATOR_ADJACENCY_MODE``);
4. the default (``connected``).

A disabled row is skipped, not obeyed. Every value is checked against the
flag's allowed values wherever it comes from: an invalid value is refused
here, by ``reserve flags set``, and by the database's check on the key; one
in the environment is an error, never silently replaced by the default.

Every function takes an open connection and runs in the caller's transaction
(or its own, on an autocommit connection). With a restaurant, the tenant
context is set for that transaction, so the same calls work for the table
owner and for ``service_role`` under RLS (which may write only its own
venue's rows; global rows are for the owner).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from reserve import db
from reserve.capacity import adjacency
from reserve.report import OK, Report, UsageError

VENUE, GLOBAL, ENVIRONMENT, DEFAULT = "venue override", "global override", "environment", "default"
# The all-venues row's stand-in in the unique index feature_flag_overrides_scope_key.
_GLOBAL_SCOPE = "COALESCE(restaurant_id, '00000000-0000-0000-0000-000000000000'::uuid)"


@dataclass(frozen=True)
class Flag:
    key: str
    env_var: str
    default: str
    values: tuple[str, ...]


ADJACENCY_MODE = Flag("allocator.adjacency_mode", "FEATURE_ALLOCATOR_ADJACENCY_MODE",
                      adjacency.DEFAULT_MODE, adjacency.MODES)
FLAGS = {flag.key: flag for flag in (ADJACENCY_MODE,)}


class FlagError(UsageError, ValueError):
    """An unknown flag, or a value the flag does not allow."""


class UnknownRestaurant(UsageError, LookupError):
    """No restaurant has this id (or it is not visible to this role)."""

    def __init__(self, restaurant_id: object) -> None:
        super().__init__(f"unknown restaurant {restaurant_id}: no restaurant has this id")
        self.restaurant_id = restaurant_id


@dataclass(frozen=True)
class Resolution:
    flag: str
    restaurant_id: uuid.UUID | None
    value: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "restaurant_id": str(self.restaurant_id) if self.restaurant_id else None,
                "value": self.value, "source": self.source}


@dataclass(frozen=True)
class Override:
    flag: str
    restaurant_id: uuid.UUID | None
    value: str
    enabled: bool
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "restaurant_id": str(self.restaurant_id) if self.restaurant_id else None,
                "value": self.value, "enabled": self.enabled, "updated_at": self.updated_at.isoformat()}


def flag(key: str) -> Flag:
    try:
        return FLAGS[key]
    except KeyError:
        raise FlagError(f"unknown flag {key!r}: known flags are {', '.join(FLAGS)}") from None


def check_value(spec: Flag, value: str, origin: str = "value") -> str:
    """``value`` normalized (trimmed, lower case) when the flag allows it; else FlagError naming the choices."""
    normalized = value.strip().lower()
    if normalized not in spec.values:
        raise FlagError(f"invalid {origin} {value!r} for {spec.key}: use one of {', '.join(spec.values)}")
    return normalized


def _enter_restaurant(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID) -> None:
    """Set the tenant context for this transaction and prove the restaurant exists."""
    conn.execute("SELECT public.set_restaurant_context(%s)", (restaurant_id,))
    if conn.execute("SELECT 1 FROM public.restaurants WHERE id = %s", (restaurant_id,)).fetchone() is None:
        raise UnknownRestaurant(restaurant_id)


@contextmanager
def _as_venue(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID | None) -> Iterator[None]:
    """One transaction, in the venue's tenant context when one is named (else as the table owner, for all)."""
    with conn.transaction():
        if restaurant_id is not None:
            _enter_restaurant(conn, restaurant_id)
        yield


def resolve(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID | None = None, key: str = ADJACENCY_MODE.key,
            env: Mapping[str, str] | None = None, *, context_set: bool = False) -> Resolution:
    """The value of flag ``key`` for the venue (or for all venues), and where it came from.

    ``context_set``: the caller has already set this restaurant's tenant context
    in this transaction and knows the restaurant exists (the confirm client).
    """
    spec = flag(key)
    env = os.environ if env is None else env
    with nullcontext() if context_set else conn.transaction():
        if restaurant_id is not None and not context_set:
            _enter_restaurant(conn, restaurant_id)
        row = conn.execute(
            "SELECT restaurant_id, flag_value FROM public.feature_flag_overrides "
            "WHERE flag_key = %s AND enabled AND (restaurant_id IS NULL OR restaurant_id = %s) "
            "ORDER BY restaurant_id NULLS LAST LIMIT 1",
            (spec.key, restaurant_id),
        ).fetchone()
    if row is not None:
        source = VENUE if row[0] is not None else GLOBAL
        return Resolution(spec.key, restaurant_id, check_value(spec, row[1], f"{source} value"), source)
    raw = env.get(spec.env_var)
    if raw is not None and raw.strip():
        return Resolution(spec.key, restaurant_id, check_value(spec, raw, spec.env_var), ENVIRONMENT)
    return Resolution(spec.key, restaurant_id, spec.default, DEFAULT)


def set_override(conn: psycopg.Connection[Any], value: str, restaurant_id: uuid.UUID | None = None,
                 key: str = ADJACENCY_MODE.key) -> Override:
    """Create or replace (and enable) the override of ``key`` for the venue, or for all venues."""
    spec = flag(key)
    value = check_value(spec, value)
    with _as_venue(conn, restaurant_id):
        row = conn.execute(
            "INSERT INTO public.feature_flag_overrides AS f (restaurant_id, flag_key, flag_value, enabled) "
            "VALUES (%s, %s, %s, true) "
            f"ON CONFLICT ({_GLOBAL_SCOPE}, flag_key) DO UPDATE "
            "SET flag_value = EXCLUDED.flag_value, enabled = true, updated_at = now() "
            "RETURNING f.restaurant_id, f.flag_value, f.enabled, f.updated_at",
            (restaurant_id, spec.key, value),
        ).fetchone()
    return Override(spec.key, row[0], row[1], row[2], row[3])


def unset_override(conn: psycopg.Connection[Any], restaurant_id: uuid.UUID | None = None,
                   key: str = ADJACENCY_MODE.key) -> bool:
    """Delete the override of ``key`` for the venue (or the global one). False when there was none."""
    spec = flag(key)
    with _as_venue(conn, restaurant_id):
        deleted = conn.execute(
            "DELETE FROM public.feature_flag_overrides WHERE flag_key = %s AND restaurant_id IS NOT DISTINCT FROM %s",
            (spec.key, restaurant_id),
        ).rowcount
    return deleted > 0


def list_overrides(conn: psycopg.Connection[Any], key: str | None = None,
                   restaurant_id: uuid.UUID | None = None) -> list[Override]:
    """Override rows of the known flags (or of ``key``), global first; only the venue's and global ones with
    ``restaurant_id``."""
    keys = [flag(key).key] if key else list(FLAGS)
    with _as_venue(conn, restaurant_id):
        rows = conn.execute(
            "SELECT flag_key, restaurant_id, flag_value, enabled, updated_at FROM public.feature_flag_overrides "
            "WHERE flag_key = ANY (%s) AND (%s::uuid IS NULL OR restaurant_id IS NULL OR restaurant_id = %s::uuid) "
            "ORDER BY flag_key, restaurant_id NULLS FIRST",
            (keys, restaurant_id, restaurant_id),
        ).fetchall()
    return [Override(*row) for row in rows]


# ---------------------------------------------------------------- the `reserve flags` commands, as reports


def _scope(restaurant_id: uuid.UUID | None) -> str:
    return f"restaurant {restaurant_id}" if restaurant_id else "all venues"


def report_list(url: URL, key: str | None = None, restaurant_id: uuid.UUID | None = None) -> Report:
    """Every override row of the known flags (or of ``key``), and what the environment and defaults say."""
    specs = [flag(key)] if key else list(FLAGS.values())
    report = Report("flags list")
    with db.connect(url) as conn:
        rows = list_overrides(conn, key, restaurant_id)
    report.facts["database"] = db.masked(url)
    for spec in specs:
        raw = os.environ.get(spec.env_var)
        report.facts[spec.key] = {"default": spec.default, "allowed": list(spec.values),
                                  "environment": {spec.env_var: raw}}
        mine = [row for row in rows if row.flag == spec.key]
        report.add(spec.key, OK, f"{len(mine)} override(s)" if mine else "no overrides",
                   overrides=[row.as_dict() for row in mine])
        for row in mine:
            report.add(f"{spec.key} @ {_scope(row.restaurant_id)}", OK,
                       f"{row.value}{'' if row.enabled else ' (disabled: ignored)'}", **row.as_dict())
    return report


def report_get(url: URL, restaurant_id: uuid.UUID | None = None, key: str = ADJACENCY_MODE.key) -> Report:
    report = Report("flags get")
    with db.connect(url) as conn:
        resolved = resolve(conn, restaurant_id, key)
    report.facts.update({"database": db.masked(url), **resolved.as_dict()})
    report.add(key, OK, f"{resolved.value} for {_scope(restaurant_id)} (from {resolved.source})", **resolved.as_dict())
    return report


def report_set(url: URL, value: str, restaurant_id: uuid.UUID | None = None, key: str = ADJACENCY_MODE.key) -> Report:
    value = check_value(flag(key), value)  # refused before connecting
    report = Report("flags set")
    with db.connect(url) as conn:
        before = resolve(conn, restaurant_id, key)
        row = set_override(conn, value, restaurant_id, key)
        after = resolve(conn, restaurant_id, key)
    report.facts.update({"database": db.masked(url), "flag": key, "scope": _scope(restaurant_id),
                         "before": before.as_dict(), "after": after.as_dict()})
    report.add(key, OK, f"{_scope(restaurant_id)}: {before.value} ({before.source}) -> {after.value} ({after.source})",
               override=row.as_dict())
    return report


def report_unset(url: URL, restaurant_id: uuid.UUID | None = None, key: str = ADJACENCY_MODE.key) -> Report:
    report = Report("flags unset")
    with db.connect(url) as conn:
        before = resolve(conn, restaurant_id, key)
        deleted = unset_override(conn, restaurant_id, key)
        after = resolve(conn, restaurant_id, key)
    report.facts.update({"database": db.masked(url), "flag": key, "scope": _scope(restaurant_id),
                         "before": before.as_dict(), "after": after.as_dict()})
    report.add(key, OK, (f"{_scope(restaurant_id)}: override removed, {before.value} -> {after.value} "
                         f"(now from {after.source})") if deleted else
               f"{_scope(restaurant_id)}: no override to remove; still {after.value} (from {after.source})",
               deleted=deleted)
    return report
