"""``moa_decode``: one query token per row against the packed per-head cache (Triton kernel + reference)."""

from __future__ import annotations

import torch

from moa_kernels._checks import use_triton
from moa_kernels.ops.moa_decode.reference import check_decode_inputs, reference_moa_decode
from moa_kernels.ops.moa_decode.sdpa import moa_decode_equal

__all__ = ["moa_decode", "moa_decode_equal", "reference_moa_decode", "check_decode_inputs"]


def moa_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
    implementation: str = "auto",
    max_length: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of one new token per row over the valid slots of each KV head's segment.

    Args:
        q: [B, HQ, D] fp32/fp16/bf16 (fp64 on the reference only).
        k_cache, v_cache: [B, M, D]; KV head h owns slots ``[seg_start[h], seg_start[h] + span_h)``.
        seg_start: int [H], segment start per KV head.
        lengths: int [B, H], valid slots per (row, head), counted from the segment start.
        scale: softmax scale (default ``1 / sqrt(D)``).
        return_lse: also return lse [B, HQ] float32.
        implementation: "auto" (Triton when q is on CUDA and triton is installed), "reference" or "triton".
        max_length: optional upper bound of ``lengths`` (e.g. the largest span); the Triton path
            sizes its splits from it, and reads ``lengths.max()`` (one GPU sync) when it is omitted.

    Returns:
        o: [B, HQ, D] in q's dtype (0 for rows of length 0), and lse [B, HQ] with ``return_lse``.
    """
    if use_triton(q, implementation):
        from moa_kernels.ops.moa_decode.triton import moa_decode_fwd

        return moa_decode_fwd(
            q,
            k_cache,
            v_cache,
            seg_start=seg_start,
            lengths=lengths,
            scale=scale,
            return_lse=return_lse,
            max_length=max_length,
        )
    return reference_moa_decode(
        q, k_cache, v_cache, seg_start=seg_start, lengths=lengths, scale=scale, return_lse=return_lse
    )
