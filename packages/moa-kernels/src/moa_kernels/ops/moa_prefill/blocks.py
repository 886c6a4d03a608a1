"""``blockwise_moa_prefill``: the CPU prefill of unpadded rows, from a few fused attention calls per KV head.

PyTorch's fused CPU attention (the flash kernel dense prefill runs) skips masked work only for ``is_causal``, and
only by whole tiles; with an explicit mask it computes every score of the call. So a KV head's sink + window band
is cut into pieces whose wasted scores are few. With window ``w`` and sink ``S``:

* queries ``i < w + S`` see every earlier key (the band reaches back into the sink): one causal call;
* later queries, in blocks ``[c0, c0 + n)`` with ``n = min(w, BLOCK)``, see the band keys
  ``[c0 - w + 1, c0 + n)``, query ``a`` the ``w`` of them ending at its own position. The additive mask
  ``[n, w - 1 + n]`` is the same for every block (`_band_mask`), and the blocks' keys are one overlapping strided
  view of the head's keys (`_blocks`), so every full block of a row goes into **one** masked call, stacked on the
  batch axis, without copying a key; a shorter last block is one more call;
* the same later queries see the sink: one unmasked call, merged with the band through the log-sum-exps the
  kernel returns beside the output (``aten::_scaled_dot_product_flash_attention_for_cpu``).

A block computes ``n x (w - 1 + n)`` scores for ``n x w`` useful ones, and the kernel's query tile is 32 rows below
192 query rows (``flash_attention_kernel_impl`` in PyTorch's ``FlashAttentionKernel.cpp``), so small blocks waste little. Two earlier versions were slower on the CPUs of BENCHMARKS.md: three
mask-free calls per 128-query block (causal, reversed causal, unmasked) merged by log-sum-exp, and then one masked
call per 128-query block with the sink concatenated to each block's keys. Heads with a window below
``MIN_WINDOW`` or none go through the masked reference. The test oracle is `reference_moa_prefill` (and through
it the dense masked attention).
"""

from __future__ import annotations

import torch

from moa_kernels._checks import default_scale
from moa_kernels.ops.moa_prefill.reference import reference_moa_prefill

__all__ = ["blockwise_moa_prefill", "MIN_WINDOW", "BLOCK"]

MIN_WINDOW = 64
BLOCK = 32


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention of q [B, G, n, D] over k, v [B, 1, m, D]: (o [B, G, n, D], lse [B, G, n] float32)."""
    g = q.shape[1]
    kx, vx = k.expand(-1, g, -1, -1), v.expand(-1, g, -1, -1)
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kx, vx, 0.0, causal, scale=scale)
    if o.dtype in (torch.float16, torch.bfloat16):
        o = o.float()  # merged in fp32, rounded once at the end
    return o, lse


def _band_mask(window: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [n, window - 1 + n] of a query block over its band's keys.

    Query ``a`` of a block starting at ``c0`` sees the band keys ``[c0 - w + 1 + a, c0 + a]``, that is columns
    ``a ... a + w - 1`` of the block's keys ``[c0 - w + 1, c0 + n)``: the same for every block, so one mask serves
    them all.
    """
    a = torch.arange(n, device=device).view(n, 1)
    j = torch.arange(window - 1 + n, device=device).view(1, -1)
    visible = (j >= a) & (j <= a + window - 1)
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


def _blocks(x: torch.Tensor, row: int, first: int, count: int, stride: int, length: int) -> torch.Tensor:
    """Overlapping view [count, 1, length, D] of ``x[row, 0]`` ([B, 1, T, D]): block ``i`` holds the positions
    ``first + i * stride ... + length - 1``. No copy: the fused kernel reads the blocks through their strides."""
    s_b, _, s_t, s_d = x.stride()
    offset = x.storage_offset() + row * s_b + first * s_t
    return x.as_strided((count, 1, length, x.shape[3]), (stride * s_t, 0, s_t, s_d), offset)


def _band_head(
    qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, sink: int, window: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One KV head group: qh [B, G, T, D], kh, vh [B, 1, T, D] -> (o [B, G, T, D], lse [B, G, T]).

    Queries ``i < w + S`` (the prefix) see every earlier key: one causal call. The later ones see the sink and
    their band, which are disjoint: the band runs as `_late_band`, the sink as one unmasked call, and the two are
    merged through their log-sum-exps.
    """
    bsz, g, seqlen, dim = qh.shape
    prefix = min(seqlen, window + sink)
    o_pre, lse_pre = _attend(qh[:, :, :prefix], kh[:, :, :prefix], vh[:, :, :prefix], True, scale)
    if prefix == seqlen:
        return o_pre, lse_pre
    o = torch.empty(bsz, g, seqlen, dim, dtype=o_pre.dtype, device=qh.device)
    lse = torch.empty(bsz, g, seqlen, dtype=lse_pre.dtype, device=qh.device)
    o[:, :, :prefix], lse[:, :, :prefix] = o_pre, lse_pre
    _late_band(qh, kh, vh, window, prefix, 0, scale, o, lse)
    if sink > 0:
        o_s, l_s = _attend(qh[:, :, prefix:], kh[:, :, :sink], vh[:, :, :sink], False, scale)
        _merge_into(o[:, :, prefix:], lse[:, :, prefix:], o_s, l_s)
    return o, lse


def _late_band(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    window: int,
    first: int,
    shift: int,
    scale: float,
    o: torch.Tensor,
    lse: torch.Tensor,
) -> None:
    """Queries ``[first, T)`` of qh [B, G, T, D], query ``i`` seeing the keys ``[i + shift - w + 1, i + shift]``
    of kh, vh [B, 1, L, D] (all of them inside): writes ``o[:, :, first:]`` and ``lse[:, :, first:]``.

    Blocks of ``n = min(w, BLOCK)`` queries, stacked on the batch axis of one masked call per row, their keys an
    overlapping strided view (`_blocks`); a shorter last block is one more call.
    """
    bsz, g, seqlen, _ = qh.shape
    n = min(window, BLOCK)
    count = (seqlen - first) // n
    end = first + count * n
    mask = _band_mask(window, n, qh.dtype, qh.device)
    for row in range(bsz):
        if count:
            qb = qh[row, :, first:end].unflatten(1, (count, n)).transpose(0, 1)
            kb = _blocks(kh, row, first + shift - window + 1, count, n, window - 1 + n).expand(-1, g, -1, -1)
            vb = _blocks(vh, row, first + shift - window + 1, count, n, window - 1 + n).expand(-1, g, -1, -1)
            o_b, l_b = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qb, kb, vb, 0.0, False, attn_mask=mask, scale=scale
            )
            o[row, :, first:end] = o_b.transpose(0, 1).flatten(1, 2)
            lse[row, :, first:end] = l_b.transpose(0, 1).flatten(1, 2)
        if end < seqlen:
            m = seqlen - end
            keys = slice(end + shift - window + 1, seqlen + shift)
            o_t, l_t = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qh[row : row + 1, :, end:],
                kh[row : row + 1, :, keys].expand(-1, g, -1, -1),
                vh[row : row + 1, :, keys].expand(-1, g, -1, -1),
                0.0,
                False,
                attn_mask=mask[:m, : window - 1 + m],
                scale=scale,
            )
            o[row, :, end:], lse[row, :, end:] = o_t[0], l_t[0]


def _merge_into(o: torch.Tensor, lse: torch.Tensor, o_2: torch.Tensor, lse_2: torch.Tensor) -> None:
    """(o, lse) <- attention over the union of two disjoint key sets, in place; every lse is finite here."""
    total = torch.logaddexp(lse, lse_2)
    o.mul_(torch.exp(lse - total).unsqueeze(-1).to(o.dtype))
    o.addcmul_(o_2, torch.exp(lse_2 - total).unsqueeze(-1).to(o.dtype))
    lse.copy_(total)


def blockwise_moa_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sink: int,
    windows: list[int],
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reference_moa_prefill` for rows without padding or offset, on the CPU, from unmasked fused blocks.

    Args:
        q: [B, T, HQ, D]; k, v: [B, T, H, D] (checked by the caller, `moa_prefill`).
        sink: sink tokens; windows: H Python integers.
        scale: softmax scale (default ``1 / sqrt(D)``); return_lse: also return lse [B, HQ, T] float32.

    Returns:
        o: [B, T, HQ, D] in q's dtype, and lse with ``return_lse`` (float64 for fp64 inputs).
    """
    bsz, seqlen, hq, dim = q.shape
    h = k.shape[2]
    g = hq // h
    sm_scale = default_scale(dim, scale)
    out = torch.empty_like(q)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse_out = torch.empty(bsz, hq, seqlen, dtype=lse_dtype, device=q.device) if return_lse else None
    for head, window in enumerate(windows):
        group = slice(head * g, (head + 1) * g)
        if window < MIN_WINDOW and window + sink < seqlen:
            res = reference_moa_prefill(
                q[:, :, group],
                k[:, :, head : head + 1],
                v[:, :, head : head + 1],
                sink=sink,
                windows=torch.tensor([window]),
                scale=sm_scale,
                return_lse=return_lse,
            )
            o_bt, lse = res if isinstance(res, tuple) else (res, None)
            out[:, :, group] = o_bt
            if lse_out is not None and lse is not None:
                lse_out[:, group] = lse.to(lse_dtype)
            continue
        qh = q[:, :, group].transpose(1, 2)
        kh = k[:, :, head : head + 1].transpose(1, 2)
        vh = v[:, :, head : head + 1].transpose(1, 2)
        o, lse = _band_head(qh, kh, vh, sink, window, sm_scale)
        out[:, :, group] = o.transpose(1, 2).to(q.dtype)
        if lse_out is not None:
            lse_out[:, group] = lse.to(lse_dtype)
    if lse_out is not None:
        return out, lse_out
    return out
