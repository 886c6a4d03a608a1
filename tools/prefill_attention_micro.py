"""The attention of one prefill, alone: dense causal SDPA vs a plan's `blockwise_moa_prefill`, per attended score.

    .venv/bin/python tools/prefill_attention_micro.py --plan plans/smollm2-135m-instruct/moa-gate64-1k2k-reference-0.25.json [--flex]

One torch thread, fp32, SmolLM2-135M's shape (30 layers, 3 KV heads x 3 query heads, head_dim 64), one row of N
tokens (default 8192), random q, k, v. Rows (times are the sum over the 30 layers, each layer the median of repeats):

- dense: the fused causal CPU flash kernel per layer, what dense SDPA prefill runs;
- MoA: `moa_kernels.moa_prefill` (on the CPU: `blockwise_moa_prefill`) with the plan's windows at N;
- area ideal: dense's time x the plan's attention area (the fraction of the causal triangle it attends), i.e. MoA's
  attention at dense's cost per score;
- rectangle: an unmasked fused call of N queries over as many keys as the plan's area per head, the kernel's cost per
  score without any mask or causal skipping;
- with ``--flex``: FlexAttention (`torch.compile`, Inductor's C++ backend) with a sink + window block mask, on the
  plan's most common window only, beside `blockwise_moa_prefill` on the same head.

It prints seconds and nanoseconds per attended score (query x key pairs x query heads), so the kernel's efficiency
on the band can be read against dense's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="a plan file of SmolLM2-135M (30 layers x 3 KV heads)")
    parser.add_argument("--length", type=int, default=8192, help="prompt tokens N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flex", action="store_true", help="also time FlexAttention on the most common window")
    args = parser.parse_args(argv)

    import torch

    from moa_kernels import moa_prefill
    from moa_kernels.benchmark import area_density, median_seconds
    from moa_plan import PlanError, load_plan

    torch.set_num_threads(1)
    try:
        plan = load_plan(args.plan)
    except PlanError as e:
        print(f"error: {e}")
        return 2
    n, heads, group, dim = args.length, plan.num_kv_heads, 3, 64
    if heads != 3:
        print(f"error: the plan has {heads} KV heads per layer, this script models SmolLM2's 3.")
        return 2
    windows = torch.as_tensor(plan.windows(n)).reshape(plan.num_layers, heads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, n, heads * group, dim, generator=g)
    k = torch.randn(1, n, heads, dim, generator=g)
    v = torch.randn(1, n, heads, dim, generator=g)
    scale = dim**-0.5

    def dense_layer() -> object:
        qh = q.transpose(1, 2)
        kh, vh = (x.transpose(1, 2).repeat_interleave(group, dim=1) for x in (k, v))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, True, scale=scale)

    dense_s = median_seconds(dense_layer, args.repeats, warmup=1) * plan.num_layers
    dense_scores = plan.num_layers * heads * group * n * (n + 1) // 2
    moa_s = sum(
        median_seconds(lambda w=w: moa_prefill(q, k, v, sink=plan.sink, windows=w, scale=scale), args.repeats, warmup=1)
        for w in windows
    )
    triangle = n * (n + 1) / 2
    moa_scores = group * triangle * sum(area_density(n, plan.sink, int(w)) for w in windows.flatten().tolist())
    area = moa_scores / dense_scores
    keys = max(1, round(moa_scores / (plan.num_layers * heads * group * n)))
    kr, vr = (x[:, :keys].transpose(1, 2).repeat_interleave(group, dim=1).contiguous() for x in (k, v))
    rect_s = plan.num_layers * median_seconds(
        lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), kr, vr, 0.0, False, scale=scale
        ),
        args.repeats,
        warmup=1,
    )
    rect_scores = plan.num_layers * heads * group * n * keys

    print(f"N={n}, plan {args.plan} (sink {plan.sink}), attention area {area:.3f} of the causal triangle, one thread")
    print("| attention | s | ns per score | vs dense |")
    print("| --- | --- | --- | --- |")
    for name, secs, scores in (
        ("dense causal (30 layers)", dense_s, dense_scores),
        ("MoA blockwise_moa_prefill", moa_s, moa_scores),
        ("area ideal (dense's cost per score)", dense_s * area, moa_scores),
        (f"unmasked rectangle, {keys} keys per query", rect_s, rect_scores),
    ):
        print(f"| {name} | {secs:.2f} | {secs / scores * 1e9:.2f} | {dense_s / secs:.2f}x |")

    if args.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        window, count = Counter(windows.flatten().tolist()).most_common(1)[0]
        sink = plan.sink

        def band(b, h, qi, kv):  # FlexAttention's mask_mod signature
            return (kv <= qi) & ((kv < sink) | (qi - kv < window))

        qh, kh, vh = q[:, :, :group].transpose(1, 2), k[:, :, :1].transpose(1, 2), v[:, :, :1].transpose(1, 2)
        start = time.perf_counter()
        mask = create_block_mask(band, 1, 1, n, n, device="cpu")
        compiled = torch.compile(flex_attention, dynamic=False)
        kx, vx = kh.expand(1, group, n, dim), vh.expand(1, group, n, dim)
        compiled(qh, kx, vx, block_mask=mask, scale=scale)
        setup = time.perf_counter() - start
        flex_s = median_seconds(lambda: compiled(qh, kx, vx, block_mask=mask, scale=scale), args.repeats, warmup=1)
        ours_s = median_seconds(
            lambda: moa_prefill(
                q[:, :, :group], k[:, :, :1], v[:, :, :1], sink=sink, windows=torch.tensor([window]), scale=scale
            ),
            args.repeats,
        )
        scores = group * triangle * area_density(n, sink, window)
        print(f"\nOne KV head group, window {window} ({count} heads of the plan have it):")
        print(
            f"- FlexAttention: {flex_s * 1e3:.0f} ms ({flex_s / scores * 1e9:.2f} ns per score; mask + compile {setup:.0f} s)"
        )
        print(f"- blockwise_moa_prefill: {ours_s * 1e3:.0f} ms ({ours_s / scores * 1e9:.2f} ns per score)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
