"""bench.bare: one build on the bare table, measured and dropped again."""

from __future__ import annotations

from bench import bare, builds
from bench.options import Options
from reserve.rollout import dataset
from tests.support import Database


def test_bare_builds_of_other_keys_and_knobs_run_and_are_seen_from_the_database(head_db: Database):
    with head_db.connect(autocommit=True) as conn:
        dataset.generate(conn, dataset.Shape(restaurants=4))  # 4,000 live rows: a build of a tenth of a second or more
    build = builds.constraint_build("ff", builds.SEED_KEY, with_params="fillfactor = 100",
                                    settings=("maintenance_work_mem = '128MB'",))
    assert ") WITH (fillfactor = 100) WHERE ((NOT shadow))" in build.statements[0]
    measured = bare.measure_build(head_db.url, build)
    assert measured["index_mb"] is not None and measured["wall_s"] is not None
    index = bare.measure_build(head_db.url, builds.index_build("idx", Options().shipped_key))
    assert index["holds"] == 0  # CREATE INDEX takes SHARE, not ACCESS EXCLUSIVE
    with head_db.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'bench\\_%'").fetchone()[0]
    assert left == 0
