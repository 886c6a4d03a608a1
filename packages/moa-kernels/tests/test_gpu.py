"""GPU-only checks (``make test-gpu``): bf16, 16k-token shapes, the benchmark driver on CUDA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from moa_kernels import moa_decode, moa_prefill, reference_moa_decode, reference_moa_prefill
from moa_kernels.testing import RingCache, assert_flash_close


def _load_driver():
    """Import benchmarks/bench_kernels.py (a script, not a package module)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(
    ("b", "t", "hq", "h", "d", "windows", "start"),
    [
        pytest.param(
            1, 16384, 32, 8, 128, [960, 1984, 4032, 448, 16384, 0, 64, 8128], [0], id="B1-T16384-HQ32-H8-D128"
        ),
        pytest.param(2, 4099, 8, 8, 64, [100, 2000, 64, 4099, 1, 30, 500, 7], [0, 1001], id="B2-T4099-HQ8-H8-D64"),
    ],
)
def test_gpu_prefill_bf16_long(b, t, hq, h, d, windows, start):
    torch.manual_seed(0)
    q = torch.randn(b, t, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    w = torch.tensor(windows, device="cuda")
    st = torch.tensor(start, device="cuda")
    o, lse = moa_prefill(q, k, v, sink=64, windows=w, start=st, return_lse=True, implementation="triton")
    exact, exact_lse = reference_moa_prefill(
        q.double(), k.double(), v.double(), sink=64, windows=w, start=st, return_lse=True
    )
    lowp, lowp_lse = reference_moa_prefill(q, k, v, sink=64, windows=w, start=st, return_lse=True)
    # The reference accumulates in fp32; the low-precision baseline also rounds q/k/v/o to bf16.
    assert_flash_close(o, exact, lowp, atol=2e-2)
    assert_flash_close(lse, exact_lse, lowp_lse, atol=2e-2)


def test_gpu_decode_bf16_16k_ragged():
    torch.manual_seed(0)
    b, hq, d = 4, 32, 128
    spans = [16384, 8192, 4096, 2048, 1024, 512, 128, 16384]
    m = sum(spans)
    q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(b, m, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    seg = torch.tensor([0, *torch.cumsum(torch.tensor(spans), 0)[:-1].tolist()], device="cuda")
    lengths = torch.tensor(spans, device="cuda").repeat(b, 1)
    lengths[1] //= 3
    lengths[2, 3] = 0
    o, lse = moa_decode(q, kc, vc, seg_start=seg, lengths=lengths, return_lse=True, implementation="triton")
    exact, exact_lse = reference_moa_decode(
        q.double(), kc.double(), vc.double(), seg_start=seg, lengths=lengths, return_lse=True
    )
    lowp, lowp_lse = reference_moa_decode(q, kc, vc, seg_start=seg, lengths=lengths, return_lse=True)
    assert_flash_close(o, exact, lowp, atol=2e-2)
    assert_flash_close(lse, exact_lse, lowp_lse, atol=2e-2)


def test_gpu_prefill_then_decode_bf16():
    torch.manual_seed(1)
    b, t, p, hq, h, d, sink = 2, 700, 600, 8, 2, 64, 64
    w = torch.tensor([64, 300], device="cuda")
    st = torch.tensor([0, 37], device="cuda")
    q = torch.randn(b, t, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    whole = moa_prefill(q, k, v, sink=sink, windows=w, start=st)
    cache = RingCache.empty(b, d, sink=sink, windows=w, dtype=q.dtype, device="cuda")
    cache.extend(k[:, :p], v[:, :p], start=st)
    for i in range(p, t):
        cache.append(k[:, i], v[:, i])
        o = moa_decode(q[:, i], cache.k, cache.v, seg_start=cache.seg_start, lengths=cache.lengths)
        torch.testing.assert_close(o, whole[:, i], atol=2e-2, rtol=2e-2)


def test_gpu_benchmark_driver_runs(capsys):
    _load_driver().main(["--device", "cuda", "--quick"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"]
    assert all("flex" in r["ms"] for r in result["rows"] if r["op"] == "prefill")
