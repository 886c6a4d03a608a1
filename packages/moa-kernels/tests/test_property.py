"""Property: prefill of a prompt, then token-by-token decode over the runtime's ring cache, equals one
prefill over the whole sequence with the same mask (PyTorch references, fp64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_kernels import moa_decode, moa_prefill
from moa_kernels.testing import RingCache


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 3),
    group=st.sampled_from([1, 2, 4]),
    h=st.integers(1, 3),
    sink=st.integers(0, 6),
    prompt=st.integers(1, 20),
    new=st.integers(1, 15),
    data=st.data(),
)
def test_prefill_then_decode_equals_one_prefill(batch, group, h, sink, prompt, new, data):
    windows = torch.tensor(data.draw(st.lists(st.integers(0, 25), min_size=h, max_size=h)))
    start = torch.tensor(data.draw(st.lists(st.integers(0, prompt), min_size=batch, max_size=batch)))
    t = prompt + new
    d = 8
    g = torch.Generator().manual_seed(prompt * 100 + new)
    q = torch.randn(batch, t, h * group, d, generator=g, dtype=torch.float64)
    k = torch.randn(batch, t, h, d, generator=g, dtype=torch.float64)
    v = torch.randn(batch, t, h, d, generator=g, dtype=torch.float64)
    whole, whole_lse = moa_prefill(q, k, v, sink=sink, windows=windows, start=start, return_lse=True)
    first = moa_prefill(q[:, :prompt], k[:, :prompt], v[:, :prompt], sink=sink, windows=windows, start=start)
    torch.testing.assert_close(first, whole[:, :prompt], atol=1e-12, rtol=0)
    cache = RingCache.empty(batch, d, sink=sink, windows=windows, dtype=q.dtype)
    cache.extend(k[:, :prompt], v[:, :prompt], start=start)
    for i in range(prompt, t):
        cache.append(k[:, i], v[:, i])
        o, lse = moa_decode(
            q[:, i], cache.k, cache.v, seg_start=cache.seg_start, lengths=cache.lengths, return_lse=True
        )
        torch.testing.assert_close(o, whole[:, i], atol=1e-12, rtol=0)
        torch.testing.assert_close(lse, whole_lse[:, :, i], atol=1e-12, rtol=0)
