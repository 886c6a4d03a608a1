"""``moa_attend_cache``: new prompt tokens over the packed ring cache (the cache half of a multi-turn prefill)."""

from __future__ import annotations

import torch

from moa_kernels._checks import KernelInputError, check_implementation
from moa_kernels.ops.moa_attend_cache.blocks import blockwise_attend_cache
from moa_kernels.ops.moa_attend_cache.reference import reference_moa_attend_cache, slot_positions

__all__ = ["moa_attend_cache", "blockwise_attend_cache", "reference_moa_attend_cache", "slot_positions"]


def moa_attend_cache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    seen: torch.Tensor,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None = None,
    scale: float | None = None,
    implementation: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of T new tokens per row over the cached tokens only (see `reference_moa_attend_cache`).

    PyTorch on every device (the cache side is at most ``span_h`` keys per head). ``implementation``
    "auto" on the CPU runs `blockwise_attend_cache` (mask-free fused blocks): over the whole batch
    when every row has seen the same number of tokens and none is padded, else row by row over
    each row's real new tokens; "reference" (and any other device) runs the masked reference.
    """
    check_implementation(implementation)
    if implementation == "auto" and q.device.type == "cpu" and q.dim() == 4 and q.shape[0] > 0 and q.shape[1] > 0:
        # the reference's checks (shapes, segments inside the cache) first: one clear sentence on bad input
        reference_moa_attend_cache(
            q[:, :0], k_cache, v_cache, seg_start=seg_start, lengths=lengths, seen=seen, sink=sink, windows=windows
        )
        seen_l = [int(x) for x in torch.as_tensor(seen).reshape(-1).tolist()]
        start_l = [0] * len(seen_l) if start is None else [int(x) for x in torch.as_tensor(start).reshape(-1).tolist()]
        if len(start_l) != q.shape[0] or any(not 0 <= s0 <= q.shape[1] for s0 in start_l):
            raise KernelInputError(f"start (left padding) must have one entry per row in [0, T={q.shape[1]}].")
        seg_l = [int(x) for x in torch.as_tensor(seg_start).reshape(-1).tolist()]
        win_l = [int(x) for x in torch.as_tensor(windows).reshape(-1).tolist()]
        if len(set(seen_l)) == 1 and not any(start_l):
            return blockwise_attend_cache(
                q, k_cache, v_cache, seg_start=seg_l, seen=seen_l[0], sink=sink, windows=win_l, scale=scale
            )
        out = torch.zeros_like(q)
        lse = torch.full(
            (q.shape[0], q.shape[2], q.shape[1]),
            float("-inf"),
            dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
            device=q.device,
        )
        for b, (s0, seen_b) in enumerate(zip(start_l, seen_l, strict=True)):
            if s0 < q.shape[1]:
                o_b, lse_b = blockwise_attend_cache(
                    q[b : b + 1, s0:],
                    k_cache[b : b + 1],
                    v_cache[b : b + 1],
                    seg_start=seg_l,
                    seen=seen_b,
                    sink=sink,
                    windows=win_l,
                    scale=scale,
                )
                out[b, s0:] = o_b[0]
                lse[b, :, s0:] = lse_b[0]
        return out, lse
    return reference_moa_attend_cache(
        q, k_cache, v_cache, seg_start=seg_start, lengths=lengths, seen=seen, sink=sink, windows=windows,
        start=start, scale=scale,
    )  # fmt: skip
