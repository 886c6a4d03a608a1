"""``moa_attend_cache``: new prompt tokens over the packed ring cache (the cache half of a multi-turn prefill)."""

from __future__ import annotations

import torch

from moa_kernels._checks import check_implementation
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
    "auto" on the CPU, when every row has seen the same number of tokens and the new ones have no
    left padding, runs `blockwise_attend_cache` (mask-free fused blocks); otherwise, and with
    "reference", the masked reference.
    """
    check_implementation(implementation)
    if implementation == "auto" and q.device.type == "cpu" and q.dim() == 4 and q.shape[0] > 0 and q.shape[1] > 0:
        seen_t = torch.as_tensor(seen).reshape(-1)
        win = torch.as_tensor(windows).reshape(-1)
        seg = torch.as_tensor(seg_start).reshape(-1)
        uniform = seen_t.numel() == q.shape[0] and bool((seen_t == seen_t[0]).all())
        unpadded = start is None or not bool(torch.as_tensor(start).any())
        if uniform and unpadded and win.numel() == seg.numel() and q.shape[2] % max(seg.numel(), 1) == 0:
            # the reference's checks (shapes, segments inside the cache) first: one clear sentence on bad input
            reference_moa_attend_cache(
                q[:, :0], k_cache, v_cache, seg_start=seg_start, lengths=lengths, seen=seen, sink=sink, windows=windows
            )
            return blockwise_attend_cache(
                q,
                k_cache,
                v_cache,
                seg_start=[int(s) for s in seg.tolist()],
                seen=int(seen_t[0]),
                sink=sink,
                windows=[int(w) for w in win.tolist()],
                scale=scale,
            )
    return reference_moa_attend_cache(
        q,
        k_cache,
        v_cache,
        seg_start=seg_start,
        lengths=lengths,
        seen=seen,
        sink=sink,
        windows=windows,
        start=start,
        scale=scale,
    )
