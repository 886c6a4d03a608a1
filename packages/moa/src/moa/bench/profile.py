"""Profiling cost vs length: wall time and extra peak memory of profiling one sample.

Each length runs in a fresh subprocess (peak RSS is per process) through moa-profiler's own
memory probe, timed around the profiled sample only.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["PROFILE_MODEL", "run_profile_bench"]

PROFILE_MODEL = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 2, "vocab": 8192}

_CODE = """
import json, sys, time
import moa_profiler.memory as m
from moa_profiler import sample
orig = sample.profile_sample
spent = []
def timed(*a, **k):
    t = time.perf_counter(); r = orig(*a, **k); spent.append(time.perf_counter() - t); return r
# measure() imports profile_sample from moa_profiler.sample when called: time the last (long) sample.
sample.profile_sample = timed
row = m.measure(int(sys.argv[1]), max_elements=None, **json.loads(sys.argv[2]))
row["seconds"] = spent[-1]
print(json.dumps(row))
"""


def run_profile_bench(lengths: Sequence[int], shape: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Seconds and extra peak MiB of profiling one sample at each length; growth ratios between lengths."""
    shape = shape or PROFILE_MODEL
    rows: list[dict[str, Any]] = []
    for n in lengths:
        proc = subprocess.run(
            [sys.executable, "-c", _CODE, str(n), json.dumps(shape)], capture_output=True, text=True, timeout=3600
        )
        if proc.returncode != 0:
            rows.append({"length": n, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), **{f"model_{k}": v for k, v in shape.items()}})
    for prev, row in itertools.pairwise(rows):
        if "error" not in prev and "error" not in row:
            row["memory_growth"] = row["extra_mib"] / max(prev["extra_mib"], 1e-9)
            row["time_growth"] = row["seconds"] / max(prev["seconds"], 1e-9)
    return rows
