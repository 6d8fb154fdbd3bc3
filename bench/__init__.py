"""`make bench`: the benchmarks of issue 6 (see bench/suite.py and docs/BENCHMARKS.md)."""
