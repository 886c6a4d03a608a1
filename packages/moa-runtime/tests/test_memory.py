"""The cache really holds sum(span) slots per layer, laid out exactly as moa-kernels' RingCache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moa_kernels.testing import RingCache
from moa_runtime import MoACache, MoALayer, apply_plan
from moa_runtime.testing import make_model, mixed_plan


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_bytes_after_prefill(dtype: torch.dtype) -> None:
    model = make_model("llama", kv_heads=2, layers=3).to(dtype)
    plan = mixed_plan(model)
    batch, prompt, new = 2, 300, 20
    n = prompt + new
    apply_plan(model, plan)
    cache = MoACache(plan, model.config, max_length=n)
    ids = torch.randint(3, 96, (batch, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, cache=cache)
    spans = plan.spans(n)
    assert np.array_equal(cache.spans(), spans)
    assert spans.sum() < 0.6 * n * spans.size  # the plan really is sparse
    head_dim, elt = 8, torch.finfo(dtype).bits // 8
    expected = int(spans.sum()) * 2 * head_dim * elt * batch
    assert abs(cache.nbytes() - expected) <= 0.03 * expected
    assert cache.nbytes() == pytest.approx(plan.kv_bytes(n, batch=batch, head_dim=head_dim, dtype_bytes=elt), rel=0.03)
    dense = cache.dense_nbytes()
    assert dense == 3 * 2 * batch * 2 * n * head_dim * elt
    assert cache.nbytes() < 0.6 * dense


def test_layout_matches_ring_cache_of_moa_kernels() -> None:
    """Prefill (left-padded) then token-by-token decode: buffers equal RingCache's, slot for slot."""
    torch.manual_seed(0)
    batch, h, g, dim, sink = 3, 3, 2, 4, 4
    windows = [0, 5, 30]
    layer = MoALayer(np.array(windows), sink, "reference")
    ring = RingCache.empty(batch, dim, sink=sink, windows=torch.tensor(windows), dtype=torch.float64)
    t0 = 13
    start = torch.tensor([0, 4, 9])
    mask = torch.arange(t0).unsqueeze(0) >= start.unsqueeze(1)
    k = torch.randn(batch, h, t0, dim, dtype=torch.float64)
    v = torch.randn_like(k)
    layer.update(k, v, kwargs={})
    layer.attend(torch.randn(batch, h * g, t0, dim, dtype=torch.float64), mask, 0.5)
    ring.extend(k.transpose(1, 2), v.transpose(1, 2), start=start)
    for _ in range(20):
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.bool)], dim=1)
        k1 = torch.randn(batch, h, 1, dim, dtype=torch.float64)
        v1 = torch.randn_like(k1)
        layer.update(k1, v1, kwargs={})
        layer.attend(torch.randn(batch, h * g, 1, dim, dtype=torch.float64), mask, 0.5)
        ring.append(k1[:, :, 0], v1[:, :, 0])
    assert layer.keys is not None
    assert layer.values is not None
    assert torch.equal(layer.lengths, ring.lengths)
    assert torch.equal(layer.seen, ring.seen)
    for head in range(h):
        s0, n = int(ring.seg_start[head]), sink + windows[head]
        for b in range(batch):
            m = int(ring.lengths[b, head])
            assert torch.equal(layer.keys[b, s0 : s0 + m], ring.k[b, s0 : s0 + m])
            assert torch.equal(layer.values[b, s0 : s0 + m], ring.v[b, s0 : s0 + m])
        pos, ok = layer.cached_positions(head)
        assert pos.shape == (batch, n)
        assert torch.equal(ok.sum(dim=1), ring.lengths[:, head])
        # each valid slot holds the most recent position congruent to it, all within the head's visible set
        last = ring.seen.unsqueeze(1) - 1
        assert bool(((pos <= last) | ~ok).all())
        assert bool(((pos < sink) | (last - pos < max(windows[head], 0)) | ~ok).all())
