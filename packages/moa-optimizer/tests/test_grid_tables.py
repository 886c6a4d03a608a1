"""Rule grid and the loss / cost tables against independent computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from moa_optimizer import (
    COST_SCHEMA,
    LOSS_SCHEMA,
    cost_table,
    format_rule_table,
    loss_table,
    make_grid,
    synthetic_fingerprint,
    synthetic_profiles,
)
from moa_optimizer.errors import OptimizerError


def test_default_grid_is_the_original_48_rules_plus_the_cheapest():
    # The original MoA: profiled 2k/4k/8k, 16k constrained -> 48 rules; alpha -2048 never survives
    # and the negative-alpha rules are (-1024, beta) for beta in 5/8 .. 1 (research notes 3.2).
    # Ours adds one rule, (S + B, 0): the sink and one block (128 tokens) at every length, first in order.
    grid = make_grid([2048, 4096, 8192, 16384], [2048, 4096, 8192])
    assert len(grid) == 49
    assert (grid.alphas[0], grid.betas[0]) == (128.0, 0.0)
    assert grid.spans([2048, 16384])[:, 0].tolist() == [128, 128]
    original = make_grid([2048, 4096, 8192, 16384], [2048, 4096, 8192], betas=[i / 8 for i in range(9)])
    assert len(original) == 48
    assert sorted(zip(grid.alphas[1:].tolist(), grid.betas[1:].tolist(), strict=True)) == sorted(
        zip(original.alphas.tolist(), original.betas.tolist(), strict=True)
    )
    assert -2048 not in grid.alphas
    assert sorted(grid.betas[grid.alphas < 0].tolist()) == [0.625, 0.75, 0.875, 1.0]
    for a, b in zip(grid.alphas, grid.betas, strict=True):
        assert a + b * 2048 > 0
        assert a + b * 8192 <= 8192
        assert a + b * 16384 <= 16384
    spans16k = grid.spans([16384])[0]
    assert (np.diff(spans16k) >= 0).all()
    text = format_rule_table(grid, [2048, 16384])
    assert len(text.splitlines()) == 50
    assert "span@16384" in text


def test_loss_table_is_the_tail_sum_of_the_histogram():
    fp = synthetic_fingerprint(2, 4, 2)
    (profile,) = synthetic_profiles(fp, [384], seed=3)
    grid = make_grid([384], [384])
    df = loss_table([profile], grid)
    assert df.schema == pl.Schema(LOSS_SCHEMA)
    assert df.height == 2 * 2 * len(grid)
    hist = profile.hist.astype(np.float64)
    for row in df.iter_rows(named=True):
        r = row["rule"]
        a, b = grid.alphas[r], grid.betas[r]
        span = min(384, max(128, int(np.ceil((a + b * 384) / 64)) * 64))
        win = span - 64
        heads = [2 * row["kv_head"], 2 * row["kv_head"] + 1]
        expected = sum(hist[row["layer"], hq, d] for hq in heads for d in range(win, hist.shape[-1]))
        assert np.isclose(row["loss"], expected, rtol=1e-9, atol=1e-12)


def test_cost_table_spans_and_densities():
    fp = synthetic_fingerprint(2, 2)
    grid = make_grid([1024, 4096], [1024])
    df = cost_table(fp, grid, [1024, 4096])
    assert df.schema == pl.Schema(COST_SCHEMA)
    assert df.height == 2 * 2 * 2 * len(grid)
    for row in df.filter(pl.col("layer") == 1).iter_rows(named=True):
        a, b, n = grid.alphas[row["rule"]], grid.betas[row["rule"]], row["length"]
        expected = min(n, max(128, int(np.ceil((a + b * n) / 64 - 1e-9)) * 64))
        assert row["span"] == expected
        assert row["density"] == expected / n


def test_finer_grid_holds_the_original_and_halves_the_steps():
    lengths, profiled = [512, 1024, 2048], [512, 1024]
    coarse = make_grid(lengths, profiled, sink=16, block=16)
    fine = make_grid(lengths, profiled, sink=16, block=16, resolution=2)
    rules = set(zip(fine.alphas.tolist(), fine.betas.tolist(), strict=True))
    # Every original rule is still there (up to rules merged for identical spans), plus the finer ones.
    spans_fine = {tuple(col) for col in fine.spans(lengths).T.tolist()}
    assert {tuple(col) for col in coarse.spans(lengths).T.tolist()} <= spans_fine
    assert len(fine) > 2 * len(coarse)
    assert (0.0, 0.9375) in rules and (-64.0, 1.0) in rules
    assert sorted({b for b in fine.betas.tolist()}) == [i / 16 for i in range(17)]
    with pytest.raises(OptimizerError, match="resolution"):
        make_grid(lengths, profiled, resolution=0)
