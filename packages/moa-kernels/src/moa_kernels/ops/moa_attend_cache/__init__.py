"""``moa_attend_cache``: new prompt tokens over the packed ring cache (the cache half of a multi-turn prefill)."""

from __future__ import annotations

import torch

from moa_kernels._checks import check_implementation
from moa_kernels._rows import by_rows
from moa_kernels.ops.moa_attend_cache.blocks import blockwise_attend_cache, blockwise_continue_prefill
from moa_kernels.ops.moa_attend_cache.reference import (
    check_attend_cache_inputs,
    reference_moa_attend_cache,
    slot_positions,
)

__all__ = [
    "moa_attend_cache",
    "blockwise_attend_cache",
    "blockwise_continue_prefill",
    "reference_moa_attend_cache",
    "slot_positions",
]


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
        seg_l, _, win_l, seen_t, start_t = check_attend_cache_inputs(
            q, k_cache, v_cache, seg_start, lengths, seen, sink, windows, start
        )
        seen_l, start_l = [int(x) for x in seen_t.tolist()], [int(x) for x in start_t.tolist()]
        if len(set(seen_l)) == 1 and not any(start_l):
            return blockwise_attend_cache(
                q, k_cache, v_cache, seg_start=seg_l, seen=seen_l[0], sink=sink, windows=win_l, scale=scale
            )

        def attend(b: int, s0: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            caches = (k_cache[b : b + 1], v_cache[b : b + 1])
            return blockwise_attend_cache(
                q[b : b + 1, s0:], *caches, seg_start=seg_l, seen=seen_l[b], sink=sink, windows=win_l, scale=scale
            )

        return by_rows(q, start_l, attend)
    return reference_moa_attend_cache(
        q, k_cache, v_cache, seg_start=seg_start, lengths=lengths, seen=seen, sink=sink, windows=windows,
        start=start, scale=scale,
    )  # fmt: skip
