"""`make bench`: the benchmarks of issue 6 (see reserve/benchmark.py and docs/BENCHMARKS.md)."""
