"""Run the benchmarks and write bench/results/<timestamp>.json, bench/results/latest.json and docs/BENCHMARKS.md.

    python -m bench.run --rows 1000000          # what `make bench` runs
    python -m bench.run --rows 100000 --repeats 1 --no-docs

At the default 1M rows the run also measures the swap at 100k and 300k rows
(the plot of lock hold against table size); it takes about 25 minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import render, suite
from bench.options import Options

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALING_SIZES = (100_000, 300_000)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="allocations in the main dataset (default 1M)")
    parser.add_argument("--scaling", default="auto",
                        help="comma-separated smaller sizes also measured for the plot; 'auto' = 100k,300k below --rows; "
                             "'none' to skip")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of the swap and its floors")
    parser.add_argument("--no-explore", action="store_true", help="skip the other key orders and knobs")
    parser.add_argument("--no-confirm", action="store_true", help="skip the confirm throughput benchmark")
    parser.add_argument("--confirm-rounds", type=int, default=5)
    parser.add_argument("--confirm-seconds", type=float, default=4.0, help="target length of one pgbench run")
    parser.add_argument("--new-guard-key", default=None,
                        help="measure this key order (comma-separated) as if reserve/schema/guards.py NEW_GUARD shipped it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-docs", action="store_true", help="do not refresh docs/BENCHMARKS.md and its plot")
    return parser.parse_args(argv)


def scaling_sizes(spec: str, rows: int) -> tuple[int, ...]:
    if spec == "none":
        return ()
    if spec == "auto":
        return tuple(size for size in SCALING_SIZES if size < rows)
    return tuple(int(part) for part in spec.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    options = Options(
        rows=args.rows, scaling=scaling_sizes(args.scaling, args.rows), repeats=args.repeats,
        explore=not args.no_explore, confirm=not args.no_confirm, confirm_rounds=args.confirm_rounds,
        confirm_seconds=args.confirm_seconds,
        proposed_key=tuple(c.strip() for c in args.new_guard_key.split(",")) if args.new_guard_key else None,
    )
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = suite.run(options, progress)
    result["timestamp"] = stamp
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=False) + "\n"
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    progress(f"wrote {args.out / (stamp + '.json')} and latest.json")
    if not args.no_docs:
        written = render.refresh_docs(result, ROOT / "docs")
        progress("refreshed " + ", ".join(str(p.relative_to(ROOT)) for p in written))
        if ROOT / "docs" / render.PLOT not in written:
            progress("matplotlib is not installed: the plot was not redrawn (pip install -e '.[bench]')")
    print(render.summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
