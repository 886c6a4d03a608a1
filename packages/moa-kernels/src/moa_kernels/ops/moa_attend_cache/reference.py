"""Pure-PyTorch ``moa_attend_cache``: new prompt tokens attending to the packed ring cache of earlier ones.

This is the cache half of a multi-turn prefill; the other half is ``moa_prefill(..., offset=seen)``
over the new tokens, and the two are merged with ``merge_attention``. Slot positions are recovered
from the ring layout, so no position buffer is needed.
"""

from __future__ import annotations

import torch

from moa_kernels._checks import KernelInputError, compute_dtype, default_scale
from moa_kernels.ops.moa_decode.reference import check_decode_inputs

__all__ = ["check_attend_cache_inputs", "reference_moa_attend_cache", "slot_positions"]

_SCORE_BUDGET = 1 << 24


def slot_positions(span: int, sink: int, window: int, seen: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Positions held by the slots of one head's segment, -1 for empty slots.

    Layout: slot s < sink holds position s; slot ``sink + r`` holds the latest position
    ``p < seen`` with ``p >= sink`` and ``(p - sink) % window == r``.

    Args:
        span: slots of the segment. sink: S. window: W_h.
        seen: int [B], tokens written so far per row. length: int [B], valid slots per row.

    Returns:
        int64 [B, span].
    """
    s = torch.arange(span, device=seen.device).view(1, -1)
    last = seen.view(-1, 1) - 1
    if window > 0:
        r = s - sink
        ring = sink + r + window * torch.div(last - sink - r, window, rounding_mode="floor")
        ring = torch.where(ring >= sink, ring, torch.full_like(ring, -1))
    else:
        ring = torch.full_like(last.expand(-1, span), -1)
    pos = torch.where(s < sink, s.expand_as(ring), ring)
    valid = (s < length.view(-1, 1)) & (pos >= 0) & (pos <= last)
    return torch.where(valid, pos, torch.full_like(pos, -1))


def check_attend_cache_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    seen: torch.Tensor,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None,
) -> tuple[list[int], torch.Tensor, list[int], torch.Tensor, torch.Tensor]:
    """Validate `reference_moa_attend_cache`'s inputs; return segment starts and windows as Python lists,
    ``lengths`` int64 [B, H], ``seen`` and ``start`` int64 [B] on q's device.

    Raises:
        KernelInputError: naming the first problem found.
    """
    if q.dim() != 4:
        raise KernelInputError(f"q must be [B, T, HQ, D], got shape {tuple(q.shape)}.")
    bsz, seqlen, hq, dim = q.shape
    seg, lens = check_decode_inputs(
        q[:, 0] if seqlen else q.new_zeros(bsz, hq, dim), k_cache, v_cache, seg_start, lengths
    )
    h = seg.numel()
    win = [int(w) for w in torch.as_tensor(windows).reshape(-1).tolist()]
    if len(win) != h:
        raise KernelInputError(f"windows must have one entry per KV head ({h}), got {len(win)}.")
    seen_t = torch.as_tensor(seen, device=q.device).to(torch.int64).reshape(-1)
    if seen_t.numel() != bsz:
        raise KernelInputError(f"seen must have one entry per batch row ({bsz}), got {seen_t.numel()}.")
    st = (
        torch.zeros(bsz, dtype=torch.int64, device=q.device)
        if start is None
        else torch.as_tensor(start, device=q.device).to(torch.int64).reshape(-1)
    )
    if st.numel() != bsz or (not st.is_cuda and bool(((st < 0) | (st > seqlen)).any())):
        raise KernelInputError(f"start (left padding) must have one entry per row in [0, T={seqlen}].")
    seg_list = [int(x) for x in seg.tolist()]
    for head, s0 in enumerate(seg_list):
        if s0 + sink + max(win[head], 0) > k_cache.shape[1]:
            raise KernelInputError(f"the segment of KV head {head} runs past the end of the cache.")
    return seg_list, lens, win, seen_t, st


def reference_moa_attend_cache(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of T new tokens per row over the cached tokens only (the cache is not modified).

    Query token t of row b has position ``seen[b] + t - start[b]`` (tokens t < start[b] are left
    padding: output 0, lse -inf). A cached key at position j is visible to query position i iff
    ``j < sink or i - j < windows[h]`` (every cached j is < i).

    Args:
        q: [B, T, HQ, D]; k_cache, v_cache: [B, M, D] in the runtime's packed ring layout.
        seg_start: int [H]; lengths: int [B, H] valid slots (state before the new tokens are written).
        seen: int [B], tokens already in the cache per row (= the first new position).
        sink: S. windows: int [H] (W_h = span_h - S; span_h = seg_start[h+1] - seg_start[h]).
        start: int [B], left padding of the new tokens. scale: default ``1 / sqrt(D)``.

    Returns:
        o: [B, T, HQ, D] in q's dtype and lse: [B, HQ, T] float32 (float64 for fp64 inputs).
    """
    seg_list, lens, win, seen_t, st = check_attend_cache_inputs(
        q, k_cache, v_cache, seg_start, lengths, seen, sink, windows, start
    )
    bsz, seqlen, hq, dim = q.shape
    h = len(seg_list)
    g = hq // h
    cdt = compute_dtype(q.dtype)
    sm_scale = default_scale(dim, scale)
    out = torch.zeros_like(q)
    lse_out = torch.full(
        (bsz, hq, seqlen),
        float("-inf"),
        dtype=torch.float64 if cdt == torch.float64 else torch.float32,
        device=q.device,
    )
    tok = torch.arange(seqlen, device=q.device)
    qpos_all = seen_t.view(-1, 1) + tok.view(1, -1) - st.view(-1, 1)
    for head in range(h):
        s0, span = seg_list[head], sink + max(win[head], 0)
        if span == 0:
            continue
        kpos = slot_positions(span, sink, int(win[head]), seen_t, lens[:, head])
        kh = k_cache[:, s0 : s0 + span].to(cdt)
        vh = v_cache[:, s0 : s0 + span].to(cdt)
        chunk = max(16, _SCORE_BUDGET // max(1, bsz * g * max(span, 1)))
        for c0 in range(0, seqlen, chunk):
            c1 = min(seqlen, c0 + chunk)
            qh = (q[:, c0:c1, head * g : (head + 1) * g].to(cdt) * sm_scale).permute(0, 2, 1, 3)
            scores = torch.matmul(qh.reshape(bsz, g * (c1 - c0), dim), kh.transpose(1, 2)).view(bsz, g, c1 - c0, span)
            i = qpos_all[:, c0:c1].view(bsz, 1, -1, 1)
            j = kpos.view(bsz, 1, 1, span)
            visible = (j >= 0) & (i >= seen_t.view(-1, 1, 1, 1)) & ((j < sink) | (i - j < win[head]))
            scores = scores.masked_fill(~visible, float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)
            probs = torch.exp(scores - torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
            o = torch.matmul(probs.view(bsz, g * (c1 - c0), span), vh).view(bsz, g, c1 - c0, dim)
            out[:, c0:c1, head * g : (head + 1) * g] = o.permute(0, 2, 1, 3).to(q.dtype)
            lse_out[:, head * g : (head + 1) * g, c0:c1] = lse.to(lse_out.dtype)
    return out, lse_out
