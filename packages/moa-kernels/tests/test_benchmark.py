"""The benchmark driver: its density arithmetic (brute force) and the CPU smoke mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from moa_kernels.benchmark import area_density, window_for_density
from moa_kernels.testing import visibility_mask


def _load_driver():
    """Import benchmarks/bench_kernels.py (a script, not a package module)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("t", "sink", "window"), [(50, 4, 7), (64, 16, 0), (33, 0, 100), (80, 64, 64)])
def test_area_density_matches_mask_count(t, sink, window):
    mask = visibility_mask(t, sink, torch.tensor([window]), torch.zeros(1, dtype=torch.int64))
    assert area_density(t, sink, window) == pytest.approx(int(mask.sum()) / (t * (t + 1) / 2))


def test_window_for_density_is_smallest_multiple_of_64():
    w = window_for_density(4096, 64, 0.25)
    assert w % 64 == 0
    assert area_density(4096, 64, w) >= 0.25 > area_density(4096, 64, w - 64)


def test_cpu_quick_smoke_mode_ends_with_json(capsys):
    _load_driver().main(["--device", "cpu", "--quick", "--lengths", "128"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["copy_bytes_per_s"] > 0
    assert {r["op"] for r in result["rows"]} == {"prefill", "decode"}
    assert all(r["ms"]["moa"] > 0 and r["ms"]["sdpa_dense"] > 0 for r in result["rows"])


def test_median_seconds_times_repeats_after_warmup(monkeypatch):
    """A fake clock: only the timed calls count, and the result is the median of their durations."""
    import moa_kernels.benchmark as bench

    calls = []
    ticks = iter([0.0, 1.0, 10.0, 16.0, 20.0, 22.0])  # durations 1, 6, 2: median 2 (mean 3)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks, 100.0))
    assert bench.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) == 2.0
    assert len(calls) == 5
