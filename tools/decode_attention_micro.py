"""The attention of one decode step, alone: dense (transformers' static-cache call) vs a plan's per-head calls.

    .venv/bin/python tools/decode_attention_micro.py --plan plans/smollm2-135m-instruct/moa-gate64-1k2k-reference-0.25.json

One torch thread, fp32, SmolLM2-135M's shape (30 layers, 3 KV heads x 3 query heads, head_dim 64), batch 8, N 8192.
Each layer has a cache of its own, so a step streams every byte from memory as the model's step does (no layer's
cache is still in the CPU's caches when it is read again). Rows:

- dense: `dense-static`'s call per layer, 9 query heads against a preallocated [B, 3, N, 64] cache with a boolean mask;
- MoA: `moa_kernels.moa_decode_equal` per layer over a packed [B, sum(span), 64] cache, one fused SDPA per KV head;
- MoA grouped (an experiment kept here): a layer's adjacent heads of equal span in one fused call.

It prints the step's attention time (median of repeats), the KV bytes it reads and the bandwidth reached, beside the
copy bandwidth measured in the same run. With `--matmuls` it also times the part of the step every method shares:
the weight matmuls of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down with weights of their own, and the
576 x 49152 head) at this batch and at batch 1, beside one read of the same bytes, and at this batch in two other
layouts of the same products (the weight as the left operand; the weight stored transposed) and through oneDNN-packed
weights (`moa_runtime.packed_linears`' product).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="a plan file of SmolLM2-135M (30 layers x 3 KV heads)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=8192, help="tokens in the cache N")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--matmuls", action="store_true", help="also time the step's weight matmuls (see above)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from moa_kernels.benchmark import copy_bandwidth, median_seconds
    from moa_kernels.ops.moa_decode.sdpa import moa_decode_equal
    from moa_plan import Plan, PlanError

    torch.set_num_threads(1)
    b, h, g, d, n = args.batch, 3, 3, 64, args.length
    try:
        spans = [[int(x) for x in row] for row in Plan.load(args.plan).spans(n).tolist()]
    except PlanError as e:
        print(f"error: {e}")
        return 2
    if len(spans[0]) != h:
        print(f"error: the plan has {len(spans[0])} KV heads per layer, this script models SmolLM2's {h}.")
        return 2
    copy_gbs = copy_bandwidth("cpu", 128 * 2**20) / 1e9
    print(
        f"batch {b}, N {n}, {len(spans)} layers, fp32, one thread; copy bandwidth {copy_gbs:.1f} GB/s (read + write)\n"
    )
    print("| attention of one step | fused calls | KV GB read | ms | GB/s |")
    print("| --- | --- | --- | --- | --- |")

    def report(name: str, calls: int, nbytes: int, fn: Callable[[], object]) -> None:
        s = median_seconds(fn, args.repeats, warmup=1)
        print(f"| {name} | {calls} | {nbytes / 1e9:.3f} | {s * 1e3:.1f} | {nbytes / 1e9 / s:.1f} |")

    layers = len(spans)
    q = torch.rand(b, h * g, 1, d)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    dense = [(torch.rand(b, h, n, d), torch.rand(b, h, n, d)) for _ in range(layers)]

    def dense_step() -> None:
        for k, v in dense:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    report("dense static cache", layers, 2 * b * h * n * d * 4 * layers, dense_step)
    dense.clear()

    packed = [(torch.rand(b, sum(row), d), torch.rand(b, sum(row), d)) for row in spans]
    starts = [[sum(row[:i]) for i in range(h)] for row in spans]
    q3 = torch.rand(b, h * g, d)
    nbytes = 2 * b * sum(map(sum, spans)) * d * 4

    def moa_step() -> None:
        for (k, v), s, row in zip(packed, starts, spans, strict=True):
            moa_decode_equal(q3, k, v, seg_start=s, lengths=row)

    report("MoA, `moa_decode_equal` (one fused call per KV head)", layers * h, nbytes, moa_step)

    runs = []  # per layer: (first head, heads, span) of adjacent equal spans
    for row in spans:
        mine: list[list[int]] = []
        for i, span in enumerate(row):
            if mine and mine[-1][2] == span:
                mine[-1][1] += 1
            else:
                mine.append([i, 1, span])
        runs.append(mine)
    qg = q3.view(b, h, g, d)

    def grouped_step() -> None:
        for (k, v), s, mine in zip(packed, starts, runs, strict=True):
            for first, count, span in mine:
                lo = s[first]
                kk = k[:, lo : lo + count * span].view(b, count, span, d)
                vv = v[:, lo : lo + count * span].view(b, count, span, d)
                F.scaled_dot_product_attention(qg[:, first : first + count], kk, vv)

    report("MoA, adjacent equal spans in one call (experiment)", sum(map(len, runs)), nbytes, grouped_step)
    packed.clear()
    if args.matmuls:
        matmul_rows(b, layers, args.repeats)
    return 0


def matmul_rows(batch: int, layers: int, repeats: int) -> None:
    """The weight matmuls of one step (every method's fixed part) at ``batch`` and at 1, and a read of their bytes."""
    import torch
    import torch.nn.functional as F

    from moa_kernels.benchmark import median_seconds

    hidden, inner, kv, vocab = 576, 1536, 192, 49152
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inner, hidden), (inner, hidden)]
    weights = [torch.rand(o, i) for _ in range(layers) for o, i in [*shapes, (hidden, inner)]]
    weights.append(torch.rand(vocab, hidden))
    nbytes = sum(w.numel() for w in weights) * 4
    print("\n| weight matmuls of one step (the same in every method) | batch | weight GB | ms | GB/s |")
    print("| --- | --- | --- | --- | --- |")
    for rows in sorted({batch, 1}):
        x = {n: torch.rand(rows, n) for n in (hidden, inner)}

        def step(x: dict[int, torch.Tensor] = x) -> None:
            for w in weights:
                F.linear(x[w.shape[1]], w)

        s = median_seconds(step, repeats, warmup=1)
        print(f"| `F.linear` per weight | {rows} | {nbytes / 1e9:.3f} | {s * 1e3:.1f} | {nbytes / 1e9 / s:.1f} |")
    # Other layouts of the same products at ``batch`` rows: is there one this CPU's GEMM streams at read speed?
    x = {n: torch.rand(batch, n) for n in (hidden, inner)}
    transposed = [w.t().contiguous() for w in weights]
    layouts: dict[str, Callable[[], object]] = {
        "`W @ x.T` (weight as left operand)": lambda: [w @ x[w.shape[1]].t() for w in weights],
        "`x @ W.T` with `W.T` stored contiguous": lambda: [x[w.shape[0]] @ w for w in transposed],
    }
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, batch) for w in weights]
    layouts["oneDNN-packed weight (`moa_runtime.packed_linears`)"] = lambda: [
        torch.ops.mkldnn._linear_pointwise(x[w.shape[1]], p, None, "none", [], "")
        for w, p in zip(weights, packed, strict=True)
    ]
    for name, call in layouts.items():
        s = median_seconds(call, repeats, warmup=1)
        print(f"| {name} | {batch} | {nbytes / 1e9:.3f} | {s * 1e3:.1f} | {nbytes / 1e9 / s:.1f} |")
    s = median_seconds(lambda: [w.sum() for w in weights], repeats, warmup=1)
    print(f"| one read of the same weights (`sum`) | - | {nbytes / 1e9:.3f} | {s * 1e3:.1f} | {nbytes / 1e9 / s:.1f} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
