"""Benchmark library for the two ops; the driver is ``packages/moa-kernels/benchmarks/bench_kernels.py``.

On CUDA it times the Triton kernels, dense SDPA and FlexAttention (per-head sink + window block mask)
on the same inputs with ``triton.testing.do_bench`` (median), and reports achieved bytes/s against a
copy bandwidth measured in the same run. ``--device cpu --quick`` is a smoke mode that times the
PyTorch references (and dense SDPA) on tiny shapes. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moa_kernels.ops.moa_decode import moa_decode
from moa_kernels.ops.moa_prefill import moa_prefill

__all__ = [
    "BenchConfig",
    "area_density",
    "config_from_args",
    "copy_bandwidth",
    "median_seconds",
    "format_table",
    "run_benchmarks",
    "window_for_density",
]

logger = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to sweep. Densities are attention-area densities (mask area / causal triangle)."""

    device: str = "cuda"
    dtype: str = "bf16"
    lengths: tuple[int, ...] = (4096, 16384)
    densities: tuple[float, ...] = (0.25, 0.5)
    group_sizes: tuple[int, ...] = (1, 4)
    batches: tuple[int, ...] = (1, 4)
    kv_heads: int = 8
    head_dim: int = 128
    sink: int = 64
    flex: bool = True
    ops: tuple[str, ...] = ("prefill", "decode")


@dataclass
class Row:
    """One timed case: our op and its baselines on the same inputs."""

    op: str
    batch: int
    length: int
    q_heads: int
    kv_heads: int
    density: float
    windows: list[int]
    ms: dict[str, float] = field(default_factory=dict)
    bytes_floor: int = 0
    flops: float = 0.0


def area_density(seqlen: int, sink: int, window: int) -> float:
    """Mask area of sink + window over the causal triangle T(T+1)/2 (exact, token-granular)."""
    i = torch.arange(seqlen, dtype=torch.float64)
    in_sink = torch.clamp(i + 1, max=sink)
    band = torch.clamp(i + 1 - torch.clamp(i - window + 1, min=sink), min=0) if window > 0 else torch.zeros_like(i)
    return float((in_sink + band).sum()) / (seqlen * (seqlen + 1) / 2)


def window_for_density(seqlen: int, sink: int, density: float) -> int:
    """Smallest window (a multiple of 64, at least 64) whose area density reaches ``density``."""
    lo, hi = 1, max(1, (seqlen + 63) // 64)
    while lo < hi:
        mid = (lo + hi) // 2
        if area_density(seqlen, sink, 64 * mid) >= density:
            hi = mid
        else:
            lo = mid + 1
    return 64 * lo


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """Median milliseconds of a callable: do_bench on CUDA, perf_counter loops on CPU."""
    if device.startswith("cuda"):
        import triton.testing

        def cuda_ms(fn: Callable[[], Any]) -> float:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))

        return cuda_ms

    def cpu_ms(fn: Callable[[], Any]) -> float:
        return 1e3 * median_seconds(fn, repeats=7, warmup=2)

    return cpu_ms


def median_seconds(fn: Callable[[], Any], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (host clock: CPU work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of ``dst.copy_(src)`` (read + write counted), median, measured now."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _timer(device)(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def _flex_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: int, windows: torch.Tensor) -> Callable:
    """FlexAttention with a per-KV-head sink + window block mask; q: [B, HQ, T, D], k/v: [B, H, T, D]."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    group = q.shape[1] // k.shape[1]
    win = windows.to(q.device)

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (kv_idx <= q_idx) & ((kv_idx < sink) | (q_idx - kv_idx < win[h // group]))

    seqlen = q.shape[2]
    block_mask = create_block_mask(mask_mod, None, q.shape[1], seqlen, seqlen, device=str(q.device))
    compiled = torch.compile(flex_attention)

    def run() -> Any:
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=group > 1)

    # Compile outside the timed region (do_bench sizes its loop from the first call).
    run()
    return run


def _bench_prefill(cfg: BenchConfig, timer: Callable, b: int, t: int, g: int, density: float) -> Row:
    """Time moa_prefill against dense causal SDPA (and FlexAttention) on one shape."""
    h, d, dtype = cfg.kv_heads, cfg.head_dim, _DTYPES[cfg.dtype]
    w = window_for_density(t, cfg.sink, density) if density < 1.0 else t
    windows = torch.full((h,), w, dtype=torch.int64)
    q = torch.randn(b, t, h * g, d, device=cfg.device, dtype=dtype)
    k = torch.randn(b, t, h, d, device=cfg.device, dtype=dtype)
    v = torch.randn_like(k)
    impl = "triton" if cfg.device.startswith("cuda") else "reference"
    row = Row("prefill", b, t, h * g, h, area_density(t, cfg.sink, w), windows.tolist())
    row.ms["moa"] = timer(lambda: moa_prefill(q, k, v, sink=cfg.sink, windows=windows, implementation=impl))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    row.ms["sdpa_dense"] = timer(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=g > 1))
    if cfg.flex and cfg.device.startswith("cuda"):
        row.ms["flex"] = timer(_flex_prefill(qt, kt, vt, cfg.sink, windows))
    elem = q.element_size()
    row.bytes_floor = elem * (2 * q.numel() + 2 * k.numel())
    row.flops = 4.0 * d * h * g * b * row.density * t * (t + 1) / 2
    return row


def _bench_decode(cfg: BenchConfig, timer: Callable, b: int, t: int, g: int, density: float) -> Row:
    """Time moa_decode over a packed cache of spans ~ density x T against dense SDPA over T tokens."""
    h, d, dtype = cfg.kv_heads, cfg.head_dim, _DTYPES[cfg.dtype]
    span = max(cfg.sink + 64, round(density * t / 64) * 64) if density < 1.0 else t
    # Mixed spans (+-25% around the mean) with ragged rows: the realistic runtime shape.
    spans = [min(t, max(cfg.sink + 64, int(span * (0.75 + 0.5 * i / max(1, h - 1))))) for i in range(h)]
    seg = torch.tensor([0, *torch.cumsum(torch.tensor(spans), 0)[:-1].tolist()], device=cfg.device)
    m = sum(spans)
    lengths = torch.tensor(spans, device=cfg.device).repeat(b, 1)
    lengths[1::2] -= 1
    q = torch.randn(b, h * g, d, device=cfg.device, dtype=dtype)
    kc = torch.randn(b, m, d, device=cfg.device, dtype=dtype)
    vc = torch.randn_like(kc)
    impl = "triton" if cfg.device.startswith("cuda") else "reference"
    row = Row("decode", b, t, h * g, h, m / (h * t), [s - cfg.sink for s in spans])
    row.ms["moa"] = timer(lambda: moa_decode(q, kc, vc, seg_start=seg, lengths=lengths, implementation=impl))
    kd = torch.randn(b, h, t, d, device=cfg.device, dtype=dtype)
    vd = torch.randn_like(kd)
    qd = q.view(b, h * g, 1, d)
    row.ms["sdpa_dense"] = timer(lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=g > 1))
    elem = q.element_size()
    row.bytes_floor = elem * (2 * q.numel() + 2 * d * int(lengths.sum()))
    row.flops = 4.0 * d * g * float(lengths.sum())
    return row


def _environment(device: str) -> dict[str, Any]:
    """Hardware, versions and git sha of this run."""
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    env["hardware"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        env["git_sha"] = sha.stdout.strip() or None
    except OSError:
        env["git_sha"] = None
    return env


def run_benchmarks(cfg: BenchConfig) -> dict[str, Any]:
    """Run the sweep; return ``{"environment", "copy_bytes_per_s", "rows"}`` (rows as dicts, with ratios)."""
    timer = _timer(cfg.device)
    copy_bw = copy_bandwidth(cfg.device, 1 << 30 if cfg.device.startswith("cuda") else 1 << 26)
    rows: list[dict[str, Any]] = []
    for op in cfg.ops:
        bench = _bench_prefill if op == "prefill" else _bench_decode
        for t in cfg.lengths:
            for b in cfg.batches:
                for g in cfg.group_sizes:
                    for density in cfg.densities:
                        logger.info("%s B=%d T=%d G=%d density=%.2f", op, b, t, g, density)
                        row = bench(cfg, timer, b, t, g, density)
                        out = asdict(row)
                        sec = row.ms["moa"] * 1e-3
                        out["bytes_per_s"] = row.bytes_floor / sec
                        out["fraction_of_copy_bw"] = out["bytes_per_s"] / copy_bw
                        out["tflops"] = row.flops / sec / 1e12
                        out["speedup_vs_sdpa"] = row.ms["sdpa_dense"] / row.ms["moa"]
                        if "flex" in row.ms:
                            out["speedup_vs_flex"] = row.ms["flex"] / row.ms["moa"]
                        rows.append(out)
    return {"environment": _environment(cfg.device), "copy_bytes_per_s": copy_bw, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| op | B | T | HQ/H | density | moa ms | sdpa ms | flex ms | x sdpa | GB/s | % copy bw | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        flex = f"{r['ms']['flex']:.3f}" if "flex" in r["ms"] else "-"
        lines.append(
            f"| {r['op']} | {r['batch']} | {r['length']} | {r['q_heads']}/{r['kv_heads']} | {r['density']:.2f} "
            f"| {r['ms']['moa']:.3f} | {r['ms']['sdpa_dense']:.3f} | {flex} | {r['speedup_vs_sdpa']:.2f} "
            f"| {r['bytes_per_s'] / 1e9:.1f} | {100 * r['fraction_of_copy_bw']:.0f} | {r['tflops']:.1f} |"
        )
    return "\n".join(lines)


def config_from_args(argv: list[str] | None = None) -> BenchConfig:
    """Parse the driver's command line (see ``benchmarks/bench_kernels.py``) into a config."""
    p = argparse.ArgumentParser(prog="bench_kernels", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--quick", action="store_true", help="tiny shapes (the CPU smoke mode)")
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    p.add_argument("--lengths", type=ints, default=None, help="comma-separated T values")
    p.add_argument("--batches", type=ints, default=None)
    p.add_argument("--group-sizes", type=ints, default=None, help="HQ / H values")
    p.add_argument("--densities", type=lambda s: tuple(float(x) for x in s.split(",")), default=None)
    p.add_argument("--ops", type=lambda s: tuple(s.split(",")), default=None, help="prefill,decode")
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None)
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    args = p.parse_args(argv)
    if args.quick:
        cfg = BenchConfig(
            device=args.device, dtype="fp32" if args.device == "cpu" else args.dtype, lengths=(256,),
            densities=(0.25,), group_sizes=(1, 2), batches=(1,), kv_heads=2, head_dim=32, sink=16,
            flex=not args.no_flex,
        )  # fmt: skip
    else:
        cfg = BenchConfig(device=args.device, dtype=args.dtype, flex=not args.no_flex)
    overrides = {
        "lengths": args.lengths, "batches": args.batches, "group_sizes": args.group_sizes,
        "densities": args.densities, "ops": args.ops, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
    }  # fmt: skip
    for key in ("ops",):
        for op in overrides[key] or ():
            if op not in ("prefill", "decode"):
                p.error(f"unknown op {op!r} (choose prefill and/or decode)")
    cfg = BenchConfig(**{**asdict(cfg), **{k: v for k, v in overrides.items() if v is not None}})
    return cfg
