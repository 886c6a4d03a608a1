"""``moa_decode_equal``: the CPU decode path when every row holds the same number of slots per head.

After an unpadded prompt (or once every row's ring is full) ``lengths[b, h]`` does not depend on
``b``, so each KV head's valid slots are one dense ``[B, L_h, D]`` view of the packed cache and
the head's attention is one call of PyTorch's fused ``scaled_dot_product_attention`` (the flash
kernel of the dense baseline) with no mask: K and V are streamed once, and no score tensor, mask
or logsumexp pass is materialised. The lengths are Python integers, so the call never reads a
tensor back: the runtime knows them from its own bookkeeping.

The test oracle is `reference_moa_decode` (and, through it, dense masked attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from moa_kernels._checks import KernelInputError, default_scale

__all__ = ["moa_decode_equal"]


def moa_decode_equal(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: Sequence[int],
    lengths: Sequence[int],
    scale: float | None = None,
    ragged: Sequence[int] = (),
    row_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per row against the packed cache, every row holding ``lengths[h]`` slots of head h.

    Heads listed in ``ragged`` are the exception: their rows hold ``row_lengths[b, h] <= lengths[h]``
    slots (left-padded batches before a long head's ring is full), masked per row in the same fused call.

    Args:
        q: [B, HQ, D]; query head hq uses KV head ``hq // (HQ // H)``.
        k_cache, v_cache: [B, M, D]; KV head h's valid slots are ``[seg_start[h], seg_start[h] + lengths[h])``.
        seg_start, lengths: H Python integers each (no device tensor: nothing is read back).
        scale: softmax scale, default ``1 / sqrt(D)``.
        ragged: KV heads whose rows differ; row_lengths: int [B, H] (needed when ``ragged`` is not empty).

    Returns:
        o: [B, 1, HQ, D] in q's dtype (the runtime's attention-output layout; 0 where a head holds no slot).
    """
    if q.dim() != 3 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise KernelInputError("q must be [B, HQ, D] and both caches [B, M, D] with the same shape.")
    bsz, hq, dim = q.shape
    h = len(seg_start)
    if h == 0 or hq % h or len(lengths) != h:
        raise KernelInputError(f"{hq} query heads, {h} segments and {len(lengths)} lengths do not match.")
    if k_cache.shape[0] != bsz or k_cache.shape[2] != dim:
        raise KernelInputError(f"k_cache must be [B={bsz}, M, D={dim}], got {tuple(k_cache.shape)}.")
    if any(n < 0 or s < 0 or s + n > k_cache.shape[1] for s, n in zip(seg_start, lengths, strict=True)):
        raise KernelInputError(f"a segment runs outside the cache (M={k_cache.shape[1]}).")
    if ragged and (row_lengths is None or tuple(row_lengths.shape) != (bsz, h)):
        raise KernelInputError(f"ragged heads need row_lengths of shape [B={bsz}, H={h}].")
    g = hq // h
    sm_scale = default_scale(dim, scale)
    ragged_set = set(ragged)
    heads = q.reshape(bsz, h, g, dim)
    outs = []
    for head, (s, n) in enumerate(zip(seg_start, lengths, strict=True)):
        qh = heads[:, head : head + 1]
        if n == 0:
            outs.append(torch.zeros_like(qh))
            continue
        kh = k_cache[:, s : s + n].unsqueeze(1)
        vh = v_cache[:, s : s + n].unsqueeze(1)
        if head in ragged_set and row_lengths is not None:
            rows = row_lengths[:, head].to(q.device).view(bsz, 1, 1, 1)
            slots = torch.arange(n, device=q.device).view(1, 1, 1, n)
            mask = torch.zeros(bsz, 1, 1, n, dtype=q.dtype, device=q.device).masked_fill(slots >= rows, float("-inf"))
            mask = mask.masked_fill(rows == 0, 0.0)  # a row with no slot: any finite scores, zeroed below
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=sm_scale)
            outs.append(o * (rows > 0).to(o.dtype))
            continue
        outs.append(F.scaled_dot_product_attention(qh, kh, vh, scale=sm_scale))
    return torch.cat(outs, dim=1).view(bsz, 1, hq, dim)
