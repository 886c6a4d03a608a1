"""The real Triton kernels, run by the interpreter on CPU (``TRITON_INTERPRET=1`` is set in conftest.py).

Each result is compared with the fp64 explicit-mask oracle under the flash-attention tolerance rule,
and with the PyTorch reference. Outputs are pre-filled with NaN so an unwritten element fails.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_kernels import KernelInputError, moa_decode, moa_prefill, reference_moa_decode, reference_moa_prefill
from moa_kernels.testing import RingCache, assert_flash_close, dense_oracle_decode, dense_oracle_prefill

triton = pytest.importorskip("triton", reason="triton is a test dependency of moa-kernels")
from moa_kernels.ops.moa_decode.triton import moa_decode_fwd  # noqa: E402
from moa_kernels.ops.moa_prefill.triton import moa_prefill_fwd  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 (set by conftest.py) or a GPU",
)
DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3}

# (B, T, HQ, H, D, sink, windows, start)
PREFILL_CASES = [
    pytest.param(2, 113, 8, 2, 64, 4, [5, 200], [0, 7], id="B2-T113-HQ8-H2-D64-G4-mixed-pad"),
    pytest.param(1, 64, 4, 4, 32, 16, [0, 0, 0, 0], None, id="B1-T64-HQ4-H4-D32-G1-span=sink"),
    pytest.param(2, 97, 4, 2, 16, 8, [300, 300], [3, 0], id="B2-T97-HQ4-H2-D16-G2-span>=T-pad"),
    pytest.param(1, 90, 2, 1, 32, 8, [16], None, id="B1-T90-HQ2-H1-D32-G2-span=block"),
    pytest.param(2, 77, 4, 4, 16, 4, [0, 3, 16, 500], [0, 20], id="B2-T77-HQ4-H4-D16-G1-mixed"),
    pytest.param(1, 51, 3, 1, 24, 0, [9], [11], id="B1-T51-HQ3-H1-D24-G3-nosink-oddD"),
]


def _inputs(shape_q, shape_kv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g, dtype=torch.float64)
    k = torch.randn(*shape_kv, generator=g, dtype=torch.float64)
    v = torch.randn(*shape_kv, generator=g, dtype=torch.float64)
    return [x.to(dtype).to(DEVICE) for x in (q, k, v)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("b", "t", "hq", "h", "d", "sink", "windows", "start"), PREFILL_CASES)
def test_triton_prefill_matches_oracle(b, t, hq, h, d, sink, windows, start, dtype):
    q, k, v = _inputs((b, t, hq, d), (b, t, h, d), dtype)
    w = torch.tensor(windows)
    st = None if start is None else torch.tensor(start)
    out = torch.full_like(q, float("nan"))
    lse_out = torch.full((b, hq, t), float("nan"), dtype=torch.float32, device=DEVICE)
    o, lse = moa_prefill_fwd(q, k, v, sink=sink, windows=w, start=st, return_lse=True, out=out, lse_out=lse_out)
    assert o.data_ptr() == out.data_ptr()
    exact_o, exact_lse = dense_oracle_prefill(q.double(), k.double(), v.double(), sink=sink, windows=w, start=st)
    lowp_o, lowp_lse = dense_oracle_prefill(q, k, v, sink=sink, windows=w, start=st)
    assert_flash_close(o.cpu(), exact_o.cpu(), lowp_o.cpu(), atol=ATOL[dtype])
    assert_flash_close(lse.cpu(), exact_lse.cpu(), lowp_lse.cpu(), atol=ATOL[dtype])
    ref_o = reference_moa_prefill(q, k, v, sink=sink, windows=w, start=st)
    assert_flash_close(o.cpu(), ref_o.cpu(), lowp_o.cpu(), atol=ATOL[dtype], factor=3.0)


def test_triton_prefill_public_dispatch_and_tiles():
    """implementation='triton' reaches the kernel; other tile sizes give the same result."""
    q, k, v = _inputs((1, 70, 4, 16), (1, 70, 2, 16), torch.float32)
    w = torch.tensor([7, 40])
    o1 = moa_prefill(q, k, v, sink=4, windows=w, implementation="triton")
    o2 = moa_prefill_fwd(q, k, v, sink=4, windows=w, block_m=32, block_n=32)
    exact, _ = dense_oracle_prefill(q.double(), k.double(), v.double(), sink=4, windows=w)
    torch.testing.assert_close(o1.double(), exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(o2.double(), exact, atol=1e-5, rtol=0)


def _ragged_cache(b, hq, h, d, spans, lengths, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = sum(spans)
    q = torch.randn(b, hq, d, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    kc = torch.randn(b, m, d, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    vc = torch.randn(b, m, d, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    seg = torch.tensor([0, *torch.cumsum(torch.tensor(spans), 0)[:-1].tolist()], device=DEVICE)
    return q, kc, vc, seg, torch.tensor(lengths, device=DEVICE)


# (B, HQ, H, D, spans, lengths, split_size)
DECODE_CASES = [
    pytest.param(2, 8, 2, 64, [40, 150], [[40, 150], [13, 0]], None, id="B2-HQ8-H2-D64-G4-ragged"),
    pytest.param(1, 4, 4, 32, [16, 16, 100, 33], [[16, 5, 100, 33]], 32, id="B1-HQ4-H4-D32-G1-split32"),
    pytest.param(3, 4, 2, 16, [70, 70], [[70, 70], [69, 70], [0, 1]], 32, id="B3-HQ4-H2-D16-G2-split32"),
    pytest.param(1, 3, 1, 24, [129], [[129]], None, id="B1-HQ3-H1-D24-G3-oddD"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("b", "hq", "h", "d", "spans", "lengths", "split"), DECODE_CASES)
def test_triton_decode_matches_oracle(b, hq, h, d, spans, lengths, split, dtype):
    q, kc, vc, seg, lens = _ragged_cache(b, hq, h, d, spans, lengths, dtype)
    out = torch.full_like(q, float("nan"))
    lse_out = torch.full((b, hq), float("nan"), dtype=torch.float32, device=DEVICE)
    # Without a split override, pass the largest span as max_length (the runtime's sync-free call).
    o, lse = moa_decode_fwd(
        q, kc, vc, seg_start=seg, lengths=lens, return_lse=True, split_size=split, out=out, lse_out=lse_out,
        max_length=None if split else max(spans),
    )  # fmt: skip
    exact_o, exact_lse = dense_oracle_decode(
        q.double().cpu(), kc.double().cpu(), vc.double().cpu(), seg_start=seg, lengths=lens
    )
    lowp_o, lowp_lse = dense_oracle_decode(q.cpu(), kc.cpu(), vc.cpu(), seg_start=seg, lengths=lens)
    assert_flash_close(o.cpu(), exact_o, lowp_o, atol=ATOL[dtype])
    assert_flash_close(lse.cpu(), exact_lse, lowp_lse, atol=ATOL[dtype])
    ref_o = reference_moa_decode(q, kc, vc, seg_start=seg, lengths=lens)
    assert_flash_close(o.cpu(), ref_o.cpu(), lowp_o, atol=ATOL[dtype], factor=3.0)


def test_triton_prefill_then_decode_equals_one_prefill():
    """Prefill P tokens, then decode the rest one by one over the ring cache (Triton both ways)."""
    b, t, p, hq, h, d, sink = 2, 40, 30, 4, 2, 16, 4
    w = torch.tensor([6, 25])
    st = torch.tensor([0, 5])
    q, k, v = _inputs((b, t, hq, d), (b, t, h, d), torch.float32, seed=3)
    whole = moa_prefill(q, k, v, sink=sink, windows=w, start=st, implementation="triton")
    first = moa_prefill(q[:, :p], k[:, :p], v[:, :p], sink=sink, windows=w, start=st, implementation="triton")
    torch.testing.assert_close(first, whole[:, :p], atol=1e-5, rtol=0)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=q.dtype, device=DEVICE)
    cache.extend(k[:, :p], v[:, :p], start=st)
    for i in range(p, t):
        cache.append(k[:, i], v[:, i])
        o = moa_decode(
            q[:, i], cache.k, cache.v, seg_start=cache.seg_start, lengths=cache.lengths, implementation="triton"
        )
        torch.testing.assert_close(o, whole[:, i], atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    t=st.integers(1, 70),
    group=st.sampled_from([1, 2, 4]),
    h=st.integers(1, 2),
    sink=st.integers(0, 20),
    data=st.data(),
)
def test_triton_prefill_random_masks(t, group, h, sink, data):
    """Random sinks, windows, padding and offsets: every tile boundary case of the masked/unmasked split."""
    windows = torch.tensor(data.draw(st.lists(st.integers(-2, 80), min_size=h, max_size=h)))
    start = torch.tensor(data.draw(st.lists(st.integers(0, t), min_size=2, max_size=2)))
    offset = torch.tensor(data.draw(st.lists(st.integers(0, 25), min_size=2, max_size=2)))
    q, k, v = _inputs((2, t, h * group, 16), (2, t, h, 16), torch.float32, seed=t)
    o, lse = moa_prefill_fwd(q, k, v, sink=sink, windows=windows, start=start, offset=offset, return_lse=True)
    exact_o, exact_lse = dense_oracle_prefill(
        q.double(), k.double(), v.double(), sink=sink, windows=windows, start=start, offset=offset
    )
    torch.testing.assert_close(o.double(), exact_o, atol=1e-5, rtol=0)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(exact_lse))


def test_triton_rejects_fp64_and_bad_out():
    q, k, v = _inputs((1, 8, 2, 16), (1, 8, 1, 16), torch.float64)
    with pytest.raises(KernelInputError, match="fp32/fp16/bf16"):
        moa_prefill_fwd(q, k, v, sink=2, windows=torch.tensor([3]))
    q, k, v = _inputs((1, 8, 2, 16), (1, 8, 1, 16), torch.float32)
    with pytest.raises(KernelInputError, match="out must be"):
        moa_prefill_fwd(q, k, v, sink=2, windows=torch.tensor([3]), out=torch.empty(1, 8, 2, 8))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_empty_shapes(impl):
    """T = 0, B = 0 and an all-empty cache give empty or zero outputs, never an error."""
    w = torch.tensor([3, 4])
    q, k = torch.randn(2, 0, 4, 16), torch.randn(2, 0, 2, 16)
    o, lse = moa_prefill(q, k, k, sink=4, windows=w, return_lse=True, implementation=impl)
    assert o.shape == (2, 0, 4, 16)
    assert lse.shape == (2, 4, 0)
    q, k = torch.randn(0, 5, 4, 16), torch.randn(0, 5, 2, 16)
    assert moa_prefill(q, k, k, sink=4, windows=w, implementation=impl).shape == (0, 5, 4, 16)
    q, kc = torch.randn(2, 4, 16), torch.randn(2, 0, 16)
    lengths = torch.zeros(2, 2, dtype=torch.int64)
    o, lse = moa_decode(
        q, kc, kc, seg_start=torch.tensor([0, 0]), lengths=lengths, return_lse=True, implementation=impl
    )
    assert torch.all(o == 0)
    assert torch.isneginf(lse).all()


@pytest.mark.parametrize("group", [1, 4])
def test_gpu_tile_sizes_in_interpreter(group):
    """The tile sizes the launchers pick on CUDA (prefill 128 rows x 64 keys, decode 64 slots)."""
    h, d = 2, 32
    q, k, v = _inputs((1, 200, h * group, d), (1, 200, h, d), torch.float32, seed=9)
    w, st = torch.tensor([70, 500]), torch.tensor([3])
    o = moa_prefill_fwd(q, k, v, sink=8, windows=w, start=st, block_m=128 // group, block_n=64)
    exact, _ = dense_oracle_prefill(q.double(), k.double(), v.double(), sink=8, windows=w, start=st)
    torch.testing.assert_close(o.double(), exact, atol=1e-5, rtol=0)
    qd, kc, vc, seg, lens = _ragged_cache(2, h * group, h, d, [150, 300], [[150, 300], [77, 0]], torch.float32)
    od = moa_decode_fwd(qd, kc, vc, seg_start=seg, lengths=lens, block_n=64, split_size=128)
    exact_d, _ = dense_oracle_decode(qd.double(), kc.double(), vc.double(), seg_start=seg, lengths=lens)
    torch.testing.assert_close(od.double(), exact_d, atol=1e-5, rtol=0)
