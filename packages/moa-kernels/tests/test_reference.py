"""The PyTorch references against the explicit-mask dense SDPA oracle, in fp64."""

from __future__ import annotations

import pytest
import torch

from moa_kernels import (
    KernelInputError,
    merge_attention,
    moa_decode,
    moa_decode_equal,
    moa_prefill,
    reference_moa_decode,
    reference_moa_prefill,
)
from moa_kernels.testing import RingCache, dense_oracle_prefill

# (B, T, HQ, H, D, sink, windows, start)
PREFILL_CASES = [
    pytest.param(2, 113, 8, 2, 16, 4, [5, 200], [0, 7], id="B2-T113-HQ8-H2-D16-mixed-pad"),
    pytest.param(1, 64, 4, 4, 8, 16, [0, 0, 0, 0], None, id="B1-T64-HQ4-H4-D8-span=sink"),
    pytest.param(3, 97, 4, 1, 8, 8, [16], [0, 3, 96], id="B3-T97-HQ4-H1-D8-G4-pad"),
    pytest.param(2, 130, 4, 2, 8, 16, [64, 300], [5, 0], id="B2-T130-HQ4-H2-D8-block-and-dense"),
    pytest.param(1, 33, 2, 2, 8, 0, [1, 7], None, id="B1-T33-HQ2-H2-D8-nosink"),
    pytest.param(2, 40, 2, 1, 8, 64, [3], [0, 40], id="B2-T40-HQ2-H1-D8-sink>T-allpad"),
]


def _inputs(b, t, hq, h, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hq, d, generator=g, dtype=dtype)
    k = torch.randn(b, t, h, d, generator=g, dtype=dtype)
    v = torch.randn(b, t, h, d, generator=g, dtype=dtype)
    return q, k, v


def _assert_lse_close(lse, ref, atol):
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(lse[fin].to(ref.dtype), ref[fin], atol=atol, rtol=0)


@pytest.mark.parametrize(("b", "t", "hq", "h", "d", "sink", "windows", "start"), PREFILL_CASES)
@pytest.mark.parametrize("chunk", [None, 7])
def test_reference_prefill_matches_oracle_fp64(b, t, hq, h, d, sink, windows, start, chunk):
    q, k, v = _inputs(b, t, hq, h, d)
    w = torch.tensor(windows)
    st = None if start is None else torch.tensor(start)
    o, lse = reference_moa_prefill(q, k, v, sink=sink, windows=w, start=st, return_lse=True, chunk_size=chunk)
    o_ref, lse_ref = dense_oracle_prefill(q, k, v, sink=sink, windows=w, start=st)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=0)
    _assert_lse_close(lse, lse_ref, 1e-12)


@pytest.mark.parametrize(("b", "t", "hq", "h", "d", "sink", "windows", "start"), PREFILL_CASES)
@pytest.mark.parametrize("chunk", [None, 7])
def test_reference_prefill_fused_fp32_matches_oracle(b, t, hq, h, d, sink, windows, start, chunk):
    """fp32 without lse takes the fused-SDPA path; compare it with the fp64 oracle."""
    q, k, v = _inputs(b, t, hq, h, d)
    w = torch.tensor(windows)
    st = None if start is None else torch.tensor(start)
    o = reference_moa_prefill(q.float(), k.float(), v.float(), sink=sink, windows=w, start=st, chunk_size=chunk)
    o_ref, _ = dense_oracle_prefill(q, k, v, sink=sink, windows=w, start=st)
    assert not torch.isnan(o).any()
    torch.testing.assert_close(o.double(), o_ref, atol=2e-5, rtol=0)


def test_reference_prefill_padded_rows_are_zero():
    q, k, v = _inputs(2, 20, 2, 1, 4)
    o, lse = moa_prefill(q, k, v, sink=2, windows=torch.tensor([4]), start=torch.tensor([5, 0]), return_lse=True)
    assert torch.all(o[0, :5] == 0)
    assert torch.all(torch.isneginf(lse[0, :, :5]))
    assert torch.all(torch.isfinite(lse[1]))


def test_reference_prefill_low_precision_keeps_dtype():
    q, k, v = _inputs(1, 30, 4, 2, 8, dtype=torch.float16)
    o, lse = moa_prefill(q, k, v, sink=4, windows=torch.tensor([3, 8]), return_lse=True, implementation="reference")
    assert o.dtype == torch.float16
    assert lse.dtype == torch.float32
    o_ref, _ = dense_oracle_prefill(q.double(), k.double(), v.double(), sink=4, windows=torch.tensor([3, 8]))
    torch.testing.assert_close(o.double(), o_ref, atol=2e-3, rtol=0)


# (B, T, HQ, H, D, sink, windows, start)
DECODE_CASES = [
    pytest.param(2, 45, 4, 2, 8, 4, [5, 100], [0, 6], id="B2-T45-HQ4-H2-D8-mixed-pad"),
    pytest.param(1, 20, 2, 2, 8, 8, [0, 3], None, id="B1-T20-HQ2-H2-D8-span=sink"),
    pytest.param(3, 30, 4, 1, 8, 2, [7], [0, 29, 30], id="B3-T30-HQ4-H1-D8-G4-ragged"),
]


@pytest.mark.parametrize(("b", "t", "hq", "h", "d", "sink", "windows", "start"), DECODE_CASES)
def test_reference_decode_over_ring_cache_matches_oracle_fp64(b, t, hq, h, d, sink, windows, start):
    """Decode of the last token over the ring cache == the last row of the dense masked prefill."""
    q, k, v = _inputs(b, t, hq, h, d)
    w = torch.tensor(windows)
    st = torch.zeros(b, dtype=torch.int64) if start is None else torch.tensor(start)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=q.dtype)
    cache.extend(k, v, start=st)
    o, lse = reference_moa_decode(
        q[:, -1], cache.k, cache.v, seg_start=cache.seg_start, lengths=cache.lengths, return_lse=True
    )
    o_ref, lse_ref = dense_oracle_prefill(q, k, v, sink=sink, windows=w, start=st)
    torch.testing.assert_close(o, o_ref[:, -1], atol=1e-12, rtol=0)
    _assert_lse_close(lse, lse_ref[:, :, -1], 1e-12)


def test_reference_decode_slot_order_does_not_matter():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    kc = torch.randn(2, 30, 8, generator=g, dtype=torch.float64)
    vc = torch.randn(2, 30, 8, generator=g, dtype=torch.float64)
    seg = torch.tensor([0, 10])
    lens = torch.tensor([[10, 20], [3, 0]])
    o, lse = moa_decode(q, kc, vc, seg_start=seg, lengths=lens, return_lse=True)
    perm = torch.cat([torch.randperm(10, generator=g), 10 + torch.randperm(20, generator=g)])
    # Row 0 fills both segments, so a permutation inside segments keeps its valid set.
    o2 = reference_moa_decode(q[:1], kc[:1, perm], vc[:1, perm], seg_start=seg, lengths=lens[:1])
    torch.testing.assert_close(o2, o[:1], atol=1e-12, rtol=0)
    assert torch.all(o[1, 2:] == 0)
    assert torch.all(torch.isneginf(lse[1, 2:]))
    # Brute force for row 1, head 0: 3 valid slots.
    s = (q[1, :2] @ kc[1, :3].T) * 8**-0.5
    torch.testing.assert_close(o[1, :2], torch.softmax(s, -1) @ vc[1, :3], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(windows=torch.tensor([1, 2, 3])), "one entry per KV head"),
        (dict(start=torch.tensor([0, 99])), "start"),
        (dict(implementation="cuda"), "implementation"),
    ],
)
def test_prefill_bad_input_raises_one_sentence(kwargs, match):
    q, k, v = _inputs(2, 10, 4, 2, 4)
    args = dict(sink=2, windows=torch.tensor([3, 4]))
    args.update(kwargs)
    with pytest.raises(KernelInputError, match=match):
        moa_prefill(q, k, v, **args)


def test_prefill_gqa_mismatch_raises():
    q, k, v = _inputs(1, 10, 3, 2, 4)
    with pytest.raises(KernelInputError, match="multiple"):
        moa_prefill(q, k, v, sink=2, windows=torch.tensor([3, 4]))


def test_decode_bad_lengths_raise():
    q = torch.randn(1, 2, 4)
    kc = torch.randn(1, 10, 4)
    with pytest.raises(KernelInputError, match="past the end"):
        moa_decode(q, kc, kc, seg_start=torch.tensor([0, 5]), lengths=torch.tensor([[5, 6]]))
    with pytest.raises(KernelInputError, match="lengths"):
        moa_decode(q, kc, kc, seg_start=torch.tensor([0, 5]), lengths=torch.tensor([5, 5]))


def test_import_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, moa_kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("offset", [[0, 3], [2, 100], [70, 64]], ids=["off0-3", "off2-100", "off70-64"])
def test_reference_prefill_offset_matches_oracle_fp64(offset):
    q, k, v = _inputs(2, 50, 4, 2, 8)
    w, st, off = torch.tensor([5, 17]), torch.tensor([0, 9]), torch.tensor(offset)
    o, lse = reference_moa_prefill(q, k, v, sink=64, windows=w, start=st, offset=off, return_lse=True, chunk_size=13)
    o_ref, lse_ref = dense_oracle_prefill(q, k, v, sink=64, windows=w, start=st, offset=off)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=0)
    _assert_lse_close(lse, lse_ref, 1e-12)


def _cross_attention(q, k, v, qpos, kpos, sink, windows, group):
    """Explicit-mask attention of queries at positions qpos [B, Tq] over keys at kpos [B, Tk] (-1 = none)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(group, dim=2)) * q.shape[-1] ** -0.5
    i = qpos[:, None, :, None]
    j = kpos[:, None, None, :]
    w = windows.repeat_interleave(group)[None, :, None, None]
    visible = (j >= 0) & (j <= i) & ((j < sink) | (i - j < w))
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - torch.where(torch.isneginf(lse), 0, lse)[..., None])
    o = torch.einsum("bhqk,bkhd->bqhd", probs, v.repeat_interleave(group, dim=2))
    return o, lse.transpose(1, 2)


def test_multi_turn_prefill_with_offset_and_merge_equals_one_prefill():
    """Turn 2 = merge(turn-2 queries over turn-1 keys, moa_prefill(turn 2, offset)) == one prefill."""
    b, t, p, hq, h, d, sink = 2, 60, 35, 4, 2, 8, 6
    q, k, v = _inputs(b, t, hq, h, d, seed=5)
    w, st = torch.tensor([4, 20]), torch.tensor([0, 7])
    whole, whole_lse = reference_moa_prefill(q, k, v, sink=sink, windows=w, start=st, return_lse=True)
    offset = p - st
    o2, lse2 = moa_prefill(q[:, p:], k[:, p:], v[:, p:], sink=sink, windows=w, offset=offset, return_lse=True)
    tok = torch.arange(t)
    pos = tok[None, :] - st[:, None]
    kpos = torch.where(pos[:, :p] >= 0, pos[:, :p], torch.full_like(pos[:, :p], -1))
    o1, lse1 = _cross_attention(q[:, p:], k[:, :p], v[:, :p], pos[:, p:], kpos, sink, w, hq // h)
    o, lse = merge_attention(o1, lse1, o2, lse2.transpose(1, 2))
    torch.testing.assert_close(o, whole[:, p:], atol=1e-12, rtol=0)
    torch.testing.assert_close(lse.transpose(1, 2), whole_lse[:, :, p:], atol=1e-12, rtol=0)


def test_merge_attention_with_empty_sides():
    o = torch.randn(3, 4, dtype=torch.float64)
    lse = torch.tensor([0.5, float("-inf"), float("-inf")], dtype=torch.float64)
    none = torch.full((3,), float("-inf"), dtype=torch.float64)
    merged, merged_lse = merge_attention(o, lse, torch.zeros_like(o), none)
    torch.testing.assert_close(merged[0], o[0])
    assert torch.all(merged[1:] == 0)
    assert torch.isneginf(merged_lse[1:]).all()


@pytest.mark.parametrize("implementation", ["auto", "reference"])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seen": torch.tensor([5])}, "seen must have one entry per batch row"),
        ({"start": torch.tensor([0, 4])}, r"start \(left padding\) must have one entry per row in \[0, T=3\]"),
        ({"start": torch.tensor([-1, 0])}, r"start \(left padding\)"),
        ({"start": torch.tensor([0])}, r"start \(left padding\)"),
        ({"windows": torch.tensor([9])}, "segment of KV head 0 runs past the end of the cache"),
        ({"windows": torch.tensor([8, 8])}, "windows must have one entry per KV head"),
    ],
)
def test_attend_cache_bad_inputs_raise_one_sentence(implementation, change, match):
    """The fused CPU path and the reference reject the same bad inputs with the same sentence."""
    from moa_kernels import moa_attend_cache

    q = torch.randn(2, 3, 2, 4)
    kc = torch.randn(2, 10, 4)
    args = {"seg_start": torch.tensor([0]), "lengths": torch.tensor([[5], [5]]), "seen": torch.tensor([5, 5]),
            "sink": 2, "windows": torch.tensor([8])}  # fmt: skip
    with pytest.raises(KernelInputError, match=match):
        moa_attend_cache(q, kc, kc, **(args | change), implementation=implementation)


@pytest.mark.parametrize(
    ("b", "t", "hq", "h", "d", "sink", "windows"),
    [
        pytest.param(2, 45, 4, 2, 8, 4, [5, 100], id="B2-T45-HQ4-H2-ring-and-dense"),
        pytest.param(1, 20, 2, 2, 8, 8, [0, 3], id="B1-T20-span=sink"),
        pytest.param(3, 30, 6, 3, 8, 2, [7, 1, 40], id="B3-T30-HQ6-H3-G2"),
        pytest.param(2, 45, 8, 4, 8, 4, [7, 7, 7, 100], id="B2-T45-H4-three-full-equal-rings-in-one-call"),
        pytest.param(2, 40, 8, 4, 8, 4, [9, 100, 9, 9], id="B2-T40-H4-equal-heads-apart-and-adjacent"),
        pytest.param(2, 6, 4, 2, 8, 2, [7, 7], id="B2-T6-equal-lengths-rings-not-full"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_equal_over_ring_cache_matches_oracle(b, t, hq, h, d, sink, windows, dtype):
    """Equal-length decode (SDPA per head, Python lengths) == the last row of the dense masked prefill."""
    q, k, v = _inputs(b, t, hq, h, d, dtype=dtype)
    w = torch.tensor(windows)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=dtype)
    cache.extend(k, v)
    lengths = cache.lengths[0].tolist()
    assert cache.lengths.eq(cache.lengths[:1]).all()  # every row holds the same slots: the op's precondition
    o = moa_decode_equal(q[:, -1], cache.k, cache.v, seg_start=cache.seg_start.tolist(), lengths=lengths)
    o_ref, _ = dense_oracle_prefill(q.double(), k.double(), v.double(), sink=sink, windows=w)
    assert o.shape == (b, 1, hq, d) and o.dtype == dtype
    torch.testing.assert_close(o[:, 0].double(), o_ref[:, -1], atol=1e-12 if dtype == torch.float64 else 1e-5, rtol=0)


def test_decode_equal_empty_head_is_zero_and_bad_segments_raise():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 8, generator=g)
    kc = torch.randn(2, 12, 8, generator=g)
    vc = torch.randn(2, 12, 8, generator=g)
    o = moa_decode_equal(q, kc, vc, seg_start=[0, 10], lengths=[10, 0])
    assert torch.all(o[:, 0, 2:] == 0)
    brute = torch.softmax((q[:, :2] @ kc[:, :10].transpose(1, 2)) * 8**-0.5, -1) @ vc[:, :10]
    torch.testing.assert_close(o[:, 0, :2], brute, atol=1e-5, rtol=0)
    with pytest.raises(KernelInputError, match="outside the cache"):
        moa_decode_equal(q, kc, vc, seg_start=[0, 10], lengths=[10, 3])
    with pytest.raises(KernelInputError, match="do not match"):
        moa_decode_equal(q, kc, vc, seg_start=[0, 5, 9], lengths=[1, 1, 1])


@pytest.mark.parametrize(
    ("b", "t", "hq", "h", "sink", "windows", "offset"),
    [
        pytest.param(2, 300, 4, 2, 4, [70, 100], None, id="two-bands"),
        pytest.param(1, 700, 6, 3, 16, [64, 500, 0], None, id="min-window-wide-and-none"),
        pytest.param(2, 613, 4, 2, 0, [65, 300], None, id="no-sink-odd-blocks"),
        pytest.param(1, 330, 2, 1, 64, [66], None, id="big-sink-small-window"),
        pytest.param(1, 90, 2, 2, 8, [200, 3], None, id="window-beyond-T-and-tiny"),
        pytest.param(2, 400, 4, 2, 16, [80, 150], [5, 5], id="uniform-offset"),
        pytest.param(1, 300, 2, 1, 4, [100], [40], id="offset-past-the-sink"),
    ],
)
def test_blockwise_prefill_matches_dense_oracle(b, t, hq, h, sink, windows, offset):
    """The CPU fast path (one masked fused call per query block) == the explicit-mask dense oracle, o and lse."""
    from moa_kernels.ops.moa_prefill.blocks import BLOCK, MIN_WINDOW

    blocks = [(t - w - sink) / min(w, BLOCK) for w in windows if w >= MIN_WINDOW and w + sink < t]
    assert max(blocks, default=0) > 1 or t < 100  # the band path runs more than one block
    q, k, v = _inputs(b, t, hq, h, 16)
    off = None if offset is None else torch.tensor(offset)
    o, lse = moa_prefill(q, k, v, sink=sink, windows=torch.tensor(windows), offset=off, return_lse=True)
    ref_o, ref_lse = reference_moa_prefill(
        q, k, v, sink=sink, windows=torch.tensor(windows), offset=off, return_lse=True
    )
    if off is None:
        ref_o, ref_lse = dense_oracle_prefill(q, k, v, sink=sink, windows=torch.tensor(windows))
    torch.testing.assert_close(o, ref_o, atol=1e-12, rtol=0)
    _assert_lse_close(lse, ref_lse, 1e-12)
    for dtype, atol in ((torch.float32, 2e-5), (torch.float16, 5e-3), (torch.bfloat16, 4e-2)):
        low = moa_prefill(q.to(dtype), k.to(dtype), v.to(dtype), sink=sink, windows=torch.tensor(windows), offset=off)
        assert low.dtype == dtype
        torch.testing.assert_close(low.double(), ref_o, atol=atol, rtol=0)


def test_blockwise_prefill_serves_padded_rows_row_by_row(monkeypatch):
    """auto on the CPU: the whole batch when unpadded, one call per row (its real tokens) when left-padded;
    "reference" never takes the fast path. Each against the dense oracle."""
    import moa_kernels.ops.moa_prefill as prefill_mod

    calls = []
    real = prefill_mod.blockwise_moa_prefill
    monkeypatch.setattr(
        prefill_mod, "blockwise_moa_prefill", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw)
    )
    q, k, v = _inputs(2, 150, 2, 1, 8)
    w = torch.tensor([70])
    moa_prefill(q, k, v, sink=4, windows=w)
    assert calls == [(2, 150, 2, 8)]
    start = torch.tensor([0, 9])
    calls.clear()
    padded, lse = moa_prefill(q, k, v, sink=4, windows=w, start=start, return_lse=True)
    assert calls == [(1, 150, 2, 8), (1, 141, 2, 8)]
    ref, ref_lse = dense_oracle_prefill(q, k, v, sink=4, windows=w, start=start)
    torch.testing.assert_close(padded, ref, atol=1e-12, rtol=0)
    _assert_lse_close(lse, ref_lse, 1e-12)
    assert torch.all(padded[1, :9] == 0)
    calls.clear()
    moa_prefill(q, k, v, sink=4, windows=w, start=start, implementation="reference")
    assert calls == []


@pytest.mark.parametrize(
    ("sink", "windows", "t1", "t2"),
    [
        pytest.param(4, [30, 7, 0], 100, 50, id="wrapped-rings-long-turn"),
        pytest.param(4, [30, 70], 50, 10, id="short-turn-partial-ring"),
        pytest.param(8, [20], 5, 40, id="seen-below-sink"),
        pytest.param(0, [25, 3], 60, 24, id="no-sink"),
        pytest.param(6, [200], 90, 33, id="ring-not-full"),
    ],
)
def test_blockwise_attend_cache_then_prefill_equals_one_prefill(sink, windows, t1, t2):
    """Turn 2 over turn 1's ring (every row at the same position, no padding): the mask-free cache side
    equals the masked reference, and merged with the new tokens' prefill it equals one dense-oracle prefill."""
    import moa_kernels.ops.moa_attend_cache as attend_mod
    from moa_kernels.ops.moa_attend_cache import moa_attend_cache, reference_moa_attend_cache

    b, hq, h, d = 2, 2 * len(windows), len(windows), 8
    q, k, v = _inputs(b, t1 + t2, hq, h, d, seed=7)
    w = torch.tensor(windows)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=q.dtype)
    cache.extend(k[:, :t1], v[:, :t1])
    args = dict(seg_start=cache.seg_start, lengths=cache.lengths, seen=cache.seen.clone(), sink=sink, windows=w)
    calls = []
    real = attend_mod.blockwise_attend_cache
    attend_mod.blockwise_attend_cache = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        o_c, lse_c = moa_attend_cache(q[:, t1:], cache.k, cache.v, **args)
    finally:
        attend_mod.blockwise_attend_cache = real
    assert calls == [1]
    ref_o, ref_lse = reference_moa_attend_cache(q[:, t1:], cache.k, cache.v, **args)
    torch.testing.assert_close(o_c, ref_o, atol=1e-12, rtol=0)
    _assert_lse_close(lse_c, ref_lse, 1e-12)
    o_n, lse_n = moa_prefill(
        q[:, t1:], k[:, t1:], v[:, t1:], sink=sink, windows=w, offset=cache.seen.clone(), return_lse=True
    )
    o, _ = merge_attention(o_c, lse_c.transpose(1, 2), o_n, lse_n.transpose(1, 2))
    whole, _ = dense_oracle_prefill(q, k, v, sink=sink, windows=w)
    torch.testing.assert_close(o, whole[:, t1:], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("sink", "windows", "t1", "t2"),
    [
        pytest.param(4, [30, 7, 0], 100, 50, id="wrapped-rings-long-chunk"),
        pytest.param(4, [30, 70], 50, 10, id="short-chunk-partial-ring"),
        pytest.param(0, [25, 3, 1], 60, 124, id="no-sink-tiny-windows"),
        pytest.param(6, [200], 90, 33, id="ring-not-full-all-early"),
        pytest.param(8, [40, 300, 96], 300, 260, id="stacked-blocks-and-tails"),
        pytest.param(8, [40], 8, 90, id="seen-equals-sink"),
    ],
)
def test_blockwise_continue_prefill_equals_one_prefill(sink, windows, t1, t2):
    """A chunk after t1 cached tokens, cache and new keys in one pass: equals the dense-oracle prefill of the
    whole sequence (fp64), and in fp32, fp16 and bf16 within rounding; fewer cached tokens than the sink is refused."""
    from moa_kernels import blockwise_continue_prefill

    b, hq, h, d = 2, 2 * len(windows), len(windows), 8
    q, k, v = _inputs(b, t1 + t2, hq, h, d, seed=11)
    w = torch.tensor(windows)
    whole, _ = dense_oracle_prefill(q, k, v, sink=sink, windows=w)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 2e-5), (torch.float16, 5e-3), (torch.bfloat16, 4e-2)):
        cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=dtype)
        cache.extend(k[:, :t1].to(dtype), v[:, :t1].to(dtype))
        o = blockwise_continue_prefill(
            q[:, t1:].to(dtype), k[:, t1:].to(dtype), v[:, t1:].to(dtype), cache.k, cache.v,
            seg_start=cache.seg_start.tolist(), seen=t1, sink=sink, windows=windows,
        )  # fmt: skip
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), whole[:, t1:], atol=atol, rtol=0)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=q.dtype)
    if sink:
        cache.extend(k[:, : sink - 1], v[:, : sink - 1])
        with pytest.raises(KernelInputError, match="seen >= sink"):
            blockwise_continue_prefill(
                q[:, :4], k[:, :4], v[:, :4], cache.k, cache.v, seg_start=cache.seg_start.tolist(),
                seen=sink - 1, sink=sink, windows=windows,
            )  # fmt: skip
