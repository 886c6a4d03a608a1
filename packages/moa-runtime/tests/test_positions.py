"""Property: any sequence of chunks (prefill, multi-token chunks, single tokens, random padding) through one
MoALayer equals brute-force attention over each row's real-token history with the plan's mask."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_runtime import MoALayer


def _brute(q, keys, values, sink, windows, g, scale):  # type: ignore[no-untyped-def]
    """q [HQ, D] at position len(keys) - 1; keys/values [P, H, D] of positions 0..P-1."""
    i = keys.shape[0] - 1
    out = torch.zeros_like(q)
    for hq in range(q.shape[0]):
        h = hq // g
        visible = [j for j in range(i + 1) if j < sink or i - j < windows[h]]
        if not visible:
            continue
        s = (keys[visible, h] @ q[hq]) * scale
        out[hq] = torch.softmax(s, 0) @ values[visible, h]
    return out


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    windows=st.lists(st.integers(-2, 9), min_size=1, max_size=3),
    sink=st.integers(0, 4),
    g=st.integers(1, 2),
    bsz=st.integers(1, 3),
)
def test_chunks_equal_brute_force(data, windows, sink, g, bsz) -> None:  # type: ignore[no-untyped-def]
    h, dim, scale = len(windows), 4, 0.7
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10**6)))
    layer = MoALayer(np.array(windows), sink, "reference")
    chunks = data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=6))
    history_k = [torch.zeros(0, h, dim, dtype=torch.float64) for _ in range(bsz)]
    history_v = [torch.zeros(0, h, dim, dtype=torch.float64) for _ in range(bsz)]
    mask = torch.zeros(bsz, 0, dtype=torch.bool)
    for t in chunks:
        valid = torch.rand(bsz, t, generator=gen) > 0.3
        if t == 1 and data.draw(st.booleans()):
            valid[:] = True
        k = torch.randn(bsz, h, t, dim, generator=gen, dtype=torch.float64)
        v = torch.randn(bsz, h, t, dim, generator=gen, dtype=torch.float64)
        q = torch.randn(bsz, h * g, t, dim, generator=gen, dtype=torch.float64)
        mask = torch.cat([mask, valid], dim=1)
        layer.update(k, v, kwargs={})
        out = layer.attend(q, mask, scale)
        for b in range(bsz):
            for c in range(t):
                if not valid[b, c]:
                    assert torch.all(out[b, c] == 0)
                    continue
                history_k[b] = torch.cat([history_k[b], k[b, :, c][None]])
                history_v[b] = torch.cat([history_v[b], v[b, :, c][None]])
                expected = _brute(q[b, :, c], history_k[b], history_v[b], sink, windows, g, scale)
                torch.testing.assert_close(out[b, c], expected, atol=1e-10, rtol=0)
