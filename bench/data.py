"""The databases a run measures: created and dropped on the server, loaded to the state before the swap.

Also the facts about the server that a result must carry to be read
(version, settings, CPUs, load), since absolute figures depend on them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy.engine import URL

from bench.instruments import Progress, connect, r3
from reserve.rollout import alembic_runner, dataset
from reserve.rollout.ephemeral import EphemeralPostgres
from reserve.schema import guards

FROM_REVISION = "0003_confirm_v12"
SETTINGS = ("shared_buffers", "maintenance_work_mem", "max_wal_size", "fsync", "synchronous_commit",
            "full_page_writes", "wal_level", "effective_cache_size", "max_parallel_maintenance_workers")


def create_database(server: EphemeralPostgres, name: str) -> URL:
    with connect(server.url()) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return server.url(name)


def drop_database(server: EphemeralPostgres, name: str) -> None:
    with connect(server.url()) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def load(url: URL, rows: int, progress: Progress) -> dict[str, Any]:
    """Schema at 0003, the shared synthetic dataset, then VACUUM: the state production is in before the swap."""
    alembic_runner.upgrade(url, FROM_REVISION)
    with connect(url) as conn:
        started = time.perf_counter()
        counts = dataset.generate(conn, dataset.Shape.for_rows(rows))
        generated = time.perf_counter() - started
        progress(f"generated {counts['allocations']:,} allocations in {generated:.0f}s")
        # The first scan after a bulk load sets hint bits (and dirties every page); a long-lived
        # production table has them already. Measured so the cost is known, then removed by VACUUM.
        started = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM {guards.TABLE}")
        first_scan = time.perf_counter() - started
        conn.execute("VACUUM (ANALYZE) public.allocations")
        conn.execute("VACUUM (ANALYZE)")
        started = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM {guards.TABLE}")
        second_scan = time.perf_counter() - started
        live = conn.execute(f"SELECT count(*) FROM {guards.TABLE} WHERE NOT shadow").fetchone()[0]
        size = conn.execute("SELECT pg_table_size('public.allocations')").fetchone()[0]
    return {"counts": counts, "live_allocations": live, "generate_s": r3(generated),
            "table_mb": round(size / 2**20, 1), "first_scan_s": r3(first_scan), "vacuumed_scan_s": r3(second_scan)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(url: URL) -> dict[str, Any]:
    with connect(url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),),
        ).fetchall())
        version = conn.execute("SHOW server_version").fetchone()[0]
        btree_gist = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'btree_gist'").fetchone()
        sortsupport = dict(conn.execute(
            """SELECT opc.opcname, EXISTS (SELECT 1 FROM pg_amproc p WHERE p.amprocfamily = opc.opcfamily AND p.amprocnum = 11)
               FROM pg_opclass opc JOIN pg_am am ON am.oid = opc.opcmethod
               WHERE am.amname = 'gist' AND opc.opcname IN ('gist_uuid_ops', 'gist_text_ops', 'range_ops')""").fetchall())
    return {
        "server_version": version,
        "btree_gist": btree_gist[0] if btree_gist else None,
        "gist_sortsupport": sortsupport,
        "gist_sorted_build_possible": all(sortsupport.values()) and bool(sortsupport),
        "settings": settings,
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
    }
