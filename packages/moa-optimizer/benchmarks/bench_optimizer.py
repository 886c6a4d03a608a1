"""Optimizer speed benchmark (not a test): 7B- and 70B-size synthetic problems.

    nice -n 10 .venv/bin/python packages/moa-optimizer/benchmarks/bench_optimizer.py [--sizes 7b,70b]

Prints a table, then one JSON line (the last stdout line).
"""

from __future__ import annotations

import argparse
import json
import sys

from moa_optimizer.bench import run_benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="7b,70b")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--single-time-limit", type=float, default=5.0)
    parser.add_argument(
        "--pareto-time-limit", type=float, default=None, help="Seconds per solve (default 3 for 7b, 15 for 70b)."
    )
    parser.add_argument("--points", type=int, default=None, help="Epsilon points (default 5 for 7b, 4 for 70b).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    limits = args.pareto_time_limit if args.pareto_time_limit is not None else {"7b": 3.0, "70b": 15.0, "tiny": 1.0}
    points = args.points if args.points is not None else {"7b": 5, "70b": 5, "tiny": 3}
    report = run_benchmark(
        args.sizes.split(","),
        density=args.density,
        single_time_limit=args.single_time_limit,
        pareto_time_limit=limits,
        points=points,
        repeats=args.repeats,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(f"{'size':>5} {'case':>7} {'seconds':>8} {'plans':>5} {'gap max':>9} {'time limit':>10}")
    for r in report["results"]:
        print(
            f"{r['size']:>5} {r['case']:>7} {r['seconds']:>8.2f} {r.get('plans', ''):>5} "
            f"{r.get('gap_max', float('nan')):>9.2e} {r.get('time_limit', ''):>10}"
        )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
