"""How fast one decode step's attention streams the KV cache: dense (transformers' static-cache call) vs MoA's per-head calls.

    .venv/bin/python tools/decode_attention_micro.py [--batch 8] [--length 8192] [--spans 960,2048,4096,8192]

One torch thread, fp32, SmolLM2-135M's shape (3 KV heads x 3 query heads, head_dim 64). For each call the script
prints the median time over repeats and the KV bytes it reads, so bytes / time is the bandwidth the fused SDPA
kernel reaches. The dense row is what `dense-static` runs per layer: 9 query heads against a preallocated [B, 3, N,
64] cache with a boolean mask (GQA in the kernel). The MoA rows are `moa_kernels.moa_decode_equal`'s call for one KV
head: its 3 query heads as a 3-token query against a [B, 1, L, 64] view of the packed cache, no mask; the last MoA row
is one layer's three heads of span L in one call (what grouping equal-length heads would buy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=8192, help="dense cache length N")
    parser.add_argument("--spans", default="960,2048,4096,8192", help="MoA segment lengths L")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    b, h, g, d, n = args.batch, 3, 3, 64, args.length
    gen = torch.Generator().manual_seed(0)
    print(f"batch {b}, N {n}, fp32, one thread; copy bandwidth for reference:")
    src = torch.randn(64 * 2**20 // 4, generator=gen)
    dst = torch.empty_like(src)
    copy_s = _median_s(lambda: dst.copy_(src), 10)
    print(f"  copy {2 * src.numel() * 4 / copy_s / 1e9:.1f} GB/s (read + write)")
    print("| call | calls per step | KV MB per call | ms per call | GB/s |")
    print("| --- | --- | --- | --- | --- |")

    q = torch.randn(b, h * g, 1, d, generator=gen)
    k = torch.randn(b, h, n, d, generator=gen)
    v = torch.randn(b, h, n, d, generator=gen)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mb = 2 * b * h * n * d * 4 / 1e6
    s = _median_s(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), args.repeats)
    print(
        f"| dense static cache (9 q heads, 3 KV heads, bool mask) | 30 | {mb:.1f} | {s * 1e3:.2f} | {mb / 1e3 / s:.1f} |"
    )

    for span in [int(x) for x in args.spans.split(",")]:
        cache_k = torch.randn(b, h * span, d, generator=gen)
        cache_v = torch.randn(b, h * span, d, generator=gen)
        qh = torch.randn(b, 1, g, d, generator=gen)
        kh, vh = cache_k[:, :span].unsqueeze(1), cache_v[:, :span].unsqueeze(1)
        mb = 2 * b * span * d * 4 / 1e6
        s = _median_s(lambda kh=kh, vh=vh, qh=qh: F.scaled_dot_product_attention(qh, kh, vh), args.repeats)
        print(f"| MoA one KV head, L={span} | 90 | {mb:.2f} | {s * 1e3:.3f} | {mb / 1e3 / s:.1f} |")
        q3 = torch.randn(b, h, g, d, generator=gen)
        k3, v3 = cache_k.view(b, h, span, d), cache_v.view(b, h, span, d)
        s3 = _median_s(lambda q3=q3, k3=k3, v3=v3: F.scaled_dot_product_attention(q3, k3, v3), args.repeats)
        print(
            f"| MoA a layer's 3 KV heads in one call, L={span} | 30 | {3 * mb:.2f} | {s3 * 1e3:.3f} | {3 * mb / 1e3 / s3:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
