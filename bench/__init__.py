"""`make bench`: the benchmarks of issue 6 (see bench/benchmark.py and docs/BENCHMARKS.md)."""
