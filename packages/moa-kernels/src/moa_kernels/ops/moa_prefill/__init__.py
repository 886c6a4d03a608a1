"""``moa_prefill``: causal attention with a per-KV-head sink + window mask (Triton kernel + reference)."""

from __future__ import annotations

import torch

from moa_kernels._checks import use_triton
from moa_kernels.ops.moa_prefill.blocks import blockwise_moa_prefill
from moa_kernels.ops.moa_prefill.reference import check_prefill_inputs, reference_moa_prefill

__all__ = ["moa_prefill", "blockwise_moa_prefill", "reference_moa_prefill", "check_prefill_inputs"]


def moa_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    implementation: str = "auto",
    offset: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention where KV head h sees its ``sink`` tokens plus a band of ``windows[h]`` tokens.

    Key position j is visible to query position i iff ``j <= i and (j < sink or i - j < windows[h])``;
    positions exclude the ``start[b]`` left-padding tokens of row b, whose outputs are 0.

    Args:
        q: [B, T, HQ, D] fp32/fp16/bf16 (fp64 on the reference only).
        k, v: [B, T, H, D], HQ % H == 0.
        sink: number of sink tokens.
        windows: int [H], band width per KV head.
        start: int [B], left padding per row (default none).
        scale: softmax scale (default ``1 / sqrt(D)``).
        return_lse: also return lse [B, HQ, T] float32.
        implementation: "auto" (Triton when q is on CUDA and triton is installed; on the CPU, rows without
            left padding and with one offset go through `blockwise_moa_prefill`), "reference" or "triton".
        offset: int [B], position of each row's first real token (default 0), for a prompt that
            continues cached tokens (multi-turn): only keys of this call are attended, so the runtime
            merges this result with attention over its cache through the lse (``merge_attention``).

    Returns:
        o: [B, T, HQ, D] in q's dtype, and lse [B, HQ, T] with ``return_lse``.
    """
    if use_triton(q, implementation):
        from moa_kernels.ops.moa_prefill.triton import moa_prefill_fwd

        return moa_prefill_fwd(
            q, k, v, sink=sink, windows=windows, start=start, scale=scale, return_lse=return_lse, offset=offset
        )
    if implementation == "auto" and q.device.type == "cpu":
        windows_t, start_t, sink_rows = check_prefill_inputs(q, k, v, sink, windows, start, offset)
        if q.shape[0] > 0 and q.shape[1] > 0 and not bool(start_t.any()) and bool((sink_rows == sink_rows[0]).all()):
            return blockwise_moa_prefill(
                q,
                k,
                v,
                sink=int(sink_rows[0]),
                windows=[int(w) for w in windows_t.tolist()],
                scale=scale,
                return_lse=return_lse,
            )
    return reference_moa_prefill(
        q, k, v, sink=sink, windows=windows, start=start, scale=scale, return_lse=return_lse, offset=offset
    )
