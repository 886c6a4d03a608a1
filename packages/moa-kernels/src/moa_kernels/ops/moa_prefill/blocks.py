"""``blockwise_moa_prefill``: the CPU prefill of unpadded rows, as one fused attention call per query block.

PyTorch's fused CPU attention (the flash kernel dense prefill runs) takes no shortcut inside a small masked
block: a causal 256 x 256 call costs as much as an unmasked one. So a KV head's sink + window band runs as one
call per block of ``n <= MAX_BLOCK`` queries. With window ``w`` and sink ``S``:

* queries ``i < w + S`` see every earlier key (the band reaches back into the sink): one causal call;
* later queries, in blocks ``[c0, c0 + n)`` with ``n <= w - 1``, see the sink and the keys
  ``[c0 - w + 1, c0 + n)``, query ``a`` the ``w`` of them ending at its own position. The keys are the sink
  followed by that range, and the additive mask ``[n, S + w - 1 + n]`` is the same for every block
  (`_band_mask`), so one mask serves them all and no log-sum-exp merge is needed.

An earlier version split each block into three mask-free calls (causal, reversed causal and unmasked) merged
through their log-sum-exps. It computed the same number of scores and was 5% (window 960) to 45% (window 64)
slower on the CPU of BENCHMARKS.md, because of the merges, flips and the extra calls. The kernel returns the
log-sum-exp beside the output (``aten::_scaled_dot_product_flash_attention_for_cpu``). Heads with a window below
``MIN_WINDOW`` (many tiny blocks) or none go through the masked reference. The test oracle is
`reference_moa_prefill` (and through it the dense masked attention).
"""

from __future__ import annotations

import torch

from moa_kernels._checks import default_scale
from moa_kernels.ops.moa_prefill.reference import reference_moa_prefill

__all__ = ["blockwise_moa_prefill", "MIN_WINDOW", "MAX_BLOCK"]

MIN_WINDOW = 64
MAX_BLOCK = 128


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


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of disjoint key sets from each set's (o, lse); every lse is finite here."""
    lse = torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)
    o = parts[0][0] * torch.exp(parts[0][1] - lse).unsqueeze(-1).to(parts[0][0].dtype)
    for o_i, lse_i in parts[1:]:
        o = o.addcmul_(o_i, torch.exp(lse_i - lse).unsqueeze(-1).to(o_i.dtype))
    return o, lse


def _band_mask(sink: int, window: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [n, sink + window - 1 + n] of a query block over the sink and its band's keys.

    Query ``a`` of a block starting at ``c0`` sees every sink key and the band keys ``[c0 - w + 1 + a, c0 + a]``,
    that is columns ``sink + a ... sink + a + w - 1``: the same for every block, so one mask serves them all.
    """
    a = torch.arange(n, device=device).view(n, 1)
    j = torch.arange(window - 1 + n, device=device).view(1, -1)
    band = (j >= a) & (j <= a + window - 1)
    visible = torch.cat([torch.ones(n, sink, dtype=torch.bool, device=device), band], dim=1)
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


def _band_head(
    qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, sink: int, window: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One KV head group: qh [B, G, T, D], kh, vh [B, 1, T, D] -> (o [B, G, T, D], lse [B, G, T])."""
    seqlen = qh.shape[2]
    prefix = min(seqlen, window + sink)
    o, lse = _attend(qh[:, :, :prefix], kh[:, :, :prefix], vh[:, :, :prefix], True, scale)
    if prefix == seqlen:
        return o, lse
    outs, lses = [o], [lse]
    block = min(window - 1, MAX_BLOCK)
    mask = _band_mask(sink, window, block, qh.dtype, qh.device)
    g = qh.shape[1]
    for c0 in range(prefix, seqlen, block):
        c1 = min(seqlen, c0 + block)
        n = c1 - c0
        left = c0 - window + 1
        if sink > 0:
            ks = torch.cat([kh[:, :, :sink], kh[:, :, left:c1]], dim=2)
            vs = torch.cat([vh[:, :, :sink], vh[:, :, left:c1]], dim=2)
        else:
            ks, vs = kh[:, :, left:c1], vh[:, :, left:c1]
        o_b, l_b = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qh[:, :, c0:c1],
            ks.expand(-1, g, -1, -1),
            vs.expand(-1, g, -1, -1),
            0.0,
            False,
            attn_mask=mask[:n, : sink + window - 1 + n],
            scale=scale,
        )
        if o_b.dtype in (torch.float16, torch.bfloat16):
            o_b = o_b.float()
        outs.append(o_b)
        lses.append(l_b)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


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
