"""bench.probing: which index a probe used, as the results document names it."""

from __future__ import annotations

from bench import probing


def test_plan_summary_names_the_index_or_the_scan():
    assert probing.plan_summary("Index Scan using allocations_no_overlap on allocations  (cost=..)") == \
        "index allocations_no_overlap"
    assert probing.plan_summary("Bitmap Heap Scan on allocations\n  ->  Bitmap Index Scan on x_idx") == "bitmap x_idx"
    assert probing.plan_summary("Seq Scan on allocations  (cost=0.00..1.00)") == "seq scan"
