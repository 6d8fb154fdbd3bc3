"""One build on the bare allocations table, measured: the step the floors and the exploration share.

The floors (bench/swap.py) and the exploration (bench/explore.py) both take
the guards away, time a Build from bench/builds.py, probe it and drop it
again; this module is that step, so both measure a build the same way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from bench.builds import Build, key_label
from bench.instruments import connect, timed_statements
from bench.options import Options
from bench.probing import measure_probes
from reserve.schema import guards


def drop_guards(url: URL) -> None:
    """From 0003: take the old guard and the redundant index away, leaving allocations bare for the floors."""
    with connect(url) as conn:
        conn.execute(guards.OLD_GUARD.drop_sql())
        conn.execute(f"DROP INDEX public.{guards.REDUNDANT_INDEX}")


def restore_redundant_index(url: URL) -> None:
    with connect(url) as conn:
        conn.execute(guards.REDUNDANT_INDEX_SQL.format(concurrently=""))


def index_mb(url: URL, name: str) -> float | None:
    with connect(url) as conn:
        size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (f"public.{name}",)).fetchone()[0]
    return None if size is None else round(size / 2**20, 1)


def measure_build(url: URL, build: Build, *, keep: bool = False, probe_params: dict[str, Any] | None = None,
                  options: Options | None = None) -> dict[str, Any]:
    """Time ``build`` (and, given ``probe_params`` and ``options``, probe it), then drop it unless ``keep``."""
    sample = timed_statements(url, build.statements, build.settings)
    result: dict[str, Any] = {"name": build.name, **sample.as_dict()}
    if build.key:
        result["key"] = key_label(build.key)
    if build.settings:
        result["settings"] = list(build.settings)
    if build.note:
        result["note"] = build.note
    if build.index:
        result["index_mb"] = index_mb(url, build.index)
    if probe_params is not None and options is not None:
        result["probe"] = measure_probes(url, probe_params, options)
    if not keep:
        with connect(url) as conn:
            conn.execute(build.drop)
    return result
