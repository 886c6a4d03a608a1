"""``moa_prefill``: causal attention with a per-KV-head sink + window mask (Triton kernel + reference)."""

from __future__ import annotations

import torch

from moa_kernels._checks import use_triton
from moa_kernels._rows import by_rows
from moa_kernels.ops.moa_prefill.blocks import blockwise_moa_prefill
from moa_kernels.ops.moa_prefill.reference import check_prefill_inputs, reference_moa_prefill

__all__ = ["moa_prefill", "blockwise_moa_prefill", "reference_moa_prefill", "check_prefill_inputs"]


def _row_by_row(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: list[int],
    starts: list[int],
    sinks: list[int],
    scale: float | None,
    return_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`blockwise_moa_prefill` of each row's real tokens (left padding cut off, the row's own sink)."""

    def attend(b: int, s0: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = (x[b : b + 1, s0:] for x in (q, k, v))
        res = blockwise_moa_prefill(*rows, sink=sinks[b], windows=windows, scale=scale, return_lse=return_lse)
        return res if isinstance(res, tuple) else (res, None)

    out, lse_out = by_rows(q, starts, attend)
    return (out, lse_out) if return_lse else out


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
        implementation: "auto" (Triton when q is on CUDA and triton is installed; on the CPU
            `blockwise_moa_prefill`, over the whole batch when no row is padded and all share one offset,
            else row by row over each row's real tokens), "reference" (the masked reference) or "triton".
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
    if implementation == "auto" and q.device.type == "cpu" and q.shape[0] > 0 and q.shape[1] > 0:
        windows_t, start_t, sink_rows = check_prefill_inputs(q, k, v, sink, windows, start, offset)
        win = [int(w) for w in windows_t.tolist()]
        if not bool(start_t.any()) and bool((sink_rows == sink_rows[0]).all()):
            return blockwise_moa_prefill(
                q, k, v, sink=int(sink_rows[0]), windows=win, scale=scale, return_lse=return_lse
            )  # fmt: skip
        return _row_by_row(q, k, v, win, start_t.tolist(), sink_rows.tolist(), scale, return_lse)
    return reference_moa_prefill(
        q, k, v, sink=sink, windows=windows, start=start, scale=scale, return_lse=return_lse, offset=offset
    )
