"""Property: prefill of a prompt, then token-by-token decode over the runtime's ring cache, equals one
prefill over the whole sequence with the same mask (PyTorch references, fp64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_kernels import merge_attention, moa_attend_cache, moa_decode, moa_prefill
from moa_kernels.testing import RingCache, dense_oracle_prefill


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


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    group=st.sampled_from([1, 2]),
    h=st.integers(1, 3),
    sink=st.integers(0, 5),
    t1=st.integers(1, 18),
    t2=st.integers(1, 18),
    data=st.data(),
)
def test_multi_turn_prefill_over_ring_cache_equals_one_prefill(group, h, sink, t1, t2, data):
    """Turn 2 = merge(moa_attend_cache(turn 2 over the ring cache of turn 1), moa_prefill(turn 2, offset=seen))."""
    batch, d = 2, 8
    windows = torch.tensor(data.draw(st.lists(st.integers(0, 20), min_size=h, max_size=h)))
    start1 = torch.tensor(data.draw(st.lists(st.integers(0, t1), min_size=batch, max_size=batch)))
    start2 = torch.tensor(data.draw(st.lists(st.integers(0, t2), min_size=batch, max_size=batch)))
    g = torch.Generator().manual_seed(t1 * 50 + t2)
    mk = lambda t, heads: torch.randn(batch, t, heads, d, generator=g, dtype=torch.float64)  # noqa: E731
    q1, k1, v1 = mk(t1, h * group), mk(t1, h), mk(t1, h)
    q2, k2, v2 = mk(t2, h * group), mk(t2, h), mk(t2, h)
    cache = RingCache.empty(batch, d, sink=sink, windows=windows, dtype=q1.dtype)
    cache.extend(k1, v1, start=start1)
    seen = cache.seen.clone()
    o_c, lse_c = moa_attend_cache(
        q2, cache.k, cache.v, seg_start=cache.seg_start, lengths=cache.lengths, seen=seen, sink=sink,
        windows=windows, start=start2,
    )  # fmt: skip
    o_n, lse_n = moa_prefill(q2, k2, v2, sink=sink, windows=windows, start=start2, offset=seen, return_lse=True)
    o, lse = merge_attention(o_c, lse_c.transpose(1, 2), o_n, lse_n.transpose(1, 2))
    for b in range(batch):
        # The row's real tokens, turn 1 then turn 2, as one unpadded sequence.
        cat = [torch.cat([x1[b, start1[b] :], x2[b, start2[b] :]])[None] for x1, x2 in ((q1, q2), (k1, k2), (v1, v2))]
        whole, whole_lse = dense_oracle_prefill(*cat, sink=sink, windows=windows)  # independent of the ops
        n2 = t2 - int(start2[b])
        torch.testing.assert_close(o[b, start2[b] :], whole[0, whole.shape[1] - n2 :], atol=1e-12, rtol=0)
        torch.testing.assert_close(lse[b, start2[b] :], whole_lse[0, :, whole.shape[1] - n2 :].T, atol=1e-12, rtol=0)
        assert torch.all(o[b, : start2[b]] == 0)
