"""Speed benchmark of the optimizer on synthetic 7B- and 70B-size problems.

Used by ``benchmarks/bench_optimizer.py`` (and reusable by a ``moa bench optimizer`` command):
`run_benchmark` returns a JSON-able dict; nothing here prints.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moa_optimizer._version import __version__
from moa_optimizer.builtin import problem_for
from moa_optimizer.config import OptimizeConfig
from moa_optimizer.ip import SolverOptions, solve
from moa_optimizer.model import Constraints
from moa_optimizer.pareto import pareto_front
from moa_optimizer.synthetic import synthetic_fingerprint, synthetic_profiles

__all__ = ["SIZES", "BenchSize", "run_benchmark"]


@dataclass(frozen=True, kw_only=True)
class BenchSize:
    """A synthetic problem size: layers x KV heads (MHA), profiled lengths, extension factor."""

    name: str
    layers: int
    heads: int
    lengths: tuple[int, ...] = (2048, 4096, 8192)
    extend: float = 2.0


SIZES = {
    "7b": BenchSize(name="7b", layers=32, heads=32),
    "70b": BenchSize(name="70b", layers=80, heads=64),
    "tiny": BenchSize(name="tiny", layers=4, heads=8, lengths=(512, 1024, 2048)),
}


def _machine() -> dict[str, Any]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        sha = ""
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "ortools": version("ortools"),
        "moa_optimizer": __version__,
        "git": sha,
    }


def run_benchmark(
    sizes: Sequence[str] = ("7b", "70b"),
    *,
    density: float = 0.5,
    single_time_limit: float = 5.0,
    pareto_time_limit: float | dict[str, float] = 3.0,
    points: int | dict[str, int] = 5,
    repeats: int = 3,
    max_rules_per_layer: int | None = 2,
    seed: int = 0,
    relative_gap: float = 1e-3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time tables, one single-objective solve (median of ``repeats``) and one Pareto search per size.

    Returns:
        ``{"machine": {...}, "results": [{size, case, seconds, plans, gap_max, ...}, ...]}``.
    """
    results = []
    for name in sizes:
        size = SIZES[name]
        fp = synthetic_fingerprint(size.layers, size.heads)
        start = time.perf_counter()
        profiles = synthetic_profiles(fp, size.lengths, seed=seed, bucket=64)
        config = OptimizeConfig(
            density=density, extend=size.extend, max_rules_per_layer=max_rules_per_layer, time_limit=single_time_limit
        )
        problem = problem_for(profiles, config)
        tables_s = time.perf_counter() - start
        L, H, R = problem.shape
        base = {"size": name, "layers": L, "kv_heads": H, "rules": R, "lengths": list(problem.constrained)}
        results.append({**base, "case": "tables", "seconds": tables_s})
        constraints = Constraints(upper=density, lower=config.lower_bound, max_rules_per_layer=max_rules_per_layer)
        times, gaps = [], []
        for _ in range(repeats):
            sol = solve(
                problem,
                len(problem.profiled) - 1,
                constraints,
                SolverOptions(time_limit=single_time_limit, relative_gap=relative_gap),
            )
            times.append(sol.seconds)
            gaps.append(sol.gap)
        results.append(
            {
                **base,
                "case": "single",
                "seconds": statistics.median(times),
                "gap_max": max(gaps),
                "time_limit": single_time_limit,
            }
        )
        if log:
            log(f"{name}: single solve {statistics.median(times):.2f}s gap {max(gaps):.2e}")
        limit = pareto_time_limit[name] if isinstance(pareto_time_limit, dict) else pareto_time_limit
        n_points = points[name] if isinstance(points, dict) else points
        start = time.perf_counter()
        front = pareto_front(
            problem, constraints, SolverOptions(time_limit=limit, relative_gap=relative_gap), points=n_points
        )
        seconds = time.perf_counter() - start
        front_gaps = [s.gap for s in front]
        results.append(
            {
                **base,
                "case": "pareto",
                "seconds": seconds,
                "plans": len(front),
                "solves": len(problem.profiled) + (n_points - 1) ** (len(problem.profiled) - 1),
                "gap_max": max(front_gaps),
                "gap_median": float(np.median(front_gaps)),
                "time_limit": limit,
            }
        )
        if log:
            log(f"{name}: pareto {len(front)} plans in {seconds:.1f}s, gaps max {max(front_gaps):.2e}")
    return {"machine": _machine(), "results": results}
