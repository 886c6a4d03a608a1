"""Benchmark plumbing: tables, the heterogeneous bench plan's density, the copy-bandwidth probe."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from moa.bench.bandwidth import copy_bandwidth
from moa.bench.e2e import bench_plan
from moa.bench.env import environment
from moa.bench.report import markdown_table, write_results
from moa_plan import ModelFingerprint

FP = ModelFingerprint(num_layers=3, num_attention_heads=8, num_key_value_heads=4, head_dim=16)


@pytest.mark.parametrize("density", [0.25, 0.5])
@pytest.mark.parametrize("method", ["uniform", "moa"])
def test_bench_plans_have_the_asked_density(method: str, density: float) -> None:
    plan = bench_plan(FP, method, density)
    for n in (4096, 8192, 16384):
        assert plan.density(n) == pytest.approx(density, abs=64 / n)
    if method == "moa":
        assert len(set(plan.spans(8192).ravel().tolist())) == 2


def test_markdown_and_files(tmp_path: Path) -> None:
    rows = [{"method": "dense", "tok_s": 12.3456, "kv": 1_000_000}, {"method": "moa", "tok_s": 40.0, "kv": None}]
    text = markdown_table(rows, ["method", "tok_s", "kv"])
    assert text.splitlines()[2] == "| dense | 12.3 | 1000000 |"
    assert text.splitlines()[3] == "| moa | 40.0 | - |"
    env = environment()
    out = write_results(rows, ["method", "tok_s"], tmp_path, "x", env, "moa bench e2e")
    assert "Command: `moa bench e2e`" in out
    assert pl.read_parquet(tmp_path / "x.parquet").height == 2


def test_copy_bandwidth_is_plausible() -> None:
    bw = copy_bandwidth(nbytes=8 * 2**20, repeats=3)
    assert 1e8 < bw < 1e13
