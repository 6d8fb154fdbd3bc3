"""`make bench`: the benchmarks of the swap, the probes and confirm throughput (see bench/suite.py and docs/BENCHMARKS.md)."""
