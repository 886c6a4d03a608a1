"""Pure-PyTorch ``moa_prefill``: the CPU inference path and the test oracle of the Triton kernel.

Queries are processed in chunks and, per chunk, one KV head at a time, so that

* memory is O(B x G x chunk x keys-of-the-chunk), never O(HQ x T^2);
* each KV head reads only its sink and its own band (narrow heads cost little);
* the G query heads of a KV head group share one matmul against the group's K/V (no repeat_kv).
"""

from __future__ import annotations

import torch

from moa_kernels._checks import KernelInputError, compute_dtype, default_scale

__all__ = ["reference_moa_prefill", "check_prefill_inputs"]

# Budget (in score elements) of one chunk's score matrix, used to size the query chunk.
_SCORE_BUDGET = 1 << 24


def check_prefill_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate prefill inputs; return int64 tensors on q's device: ``windows`` [H], ``start`` [B] and
    the per-row sink ``max(sink - offset[b], 0)`` [B] (the sink tokens that lie inside this call).

    The values of ``start`` are checked only when q is on the CPU (no GPU synchronisation).

    Raises:
        KernelInputError: naming the first problem found.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise KernelInputError("q, k and v must be 4-D: q [B, T, HQ, D], k and v [B, T, H, D].")
    bsz, seqlen, hq, dim = q.shape
    if k.shape != v.shape:
        raise KernelInputError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}.")
    if k.shape[0] != bsz or k.shape[1] != seqlen or k.shape[3] != dim:
        raise KernelInputError(f"k must be [B, T, H, D] matching q {tuple(q.shape)}, got {tuple(k.shape)}.")
    h = k.shape[2]
    if h == 0 or hq % h != 0:
        raise KernelInputError(f"the number of query heads ({hq}) must be a multiple of the KV heads ({h}).")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise KernelInputError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not q.is_floating_point():
        raise KernelInputError(f"q, k and v must be floating point, got {q.dtype}.")
    if q.device != k.device or q.device != v.device:
        raise KernelInputError("q, k and v must be on the same device.")
    if sink < 0:
        raise KernelInputError(f"sink must be >= 0, got {sink}.")
    windows_t = torch.as_tensor(windows, device=q.device).to(torch.int64).reshape(-1)
    if windows_t.numel() != h:
        raise KernelInputError(f"windows must have one entry per KV head ({h}), got {windows_t.numel()}.")
    if start is None:
        start_t = torch.zeros(bsz, dtype=torch.int64, device=q.device)
    else:
        start_t = torch.as_tensor(start, device=q.device).to(torch.int64).reshape(-1)
        if start_t.numel() != bsz:
            raise KernelInputError(f"start must have one entry per batch row ({bsz}), got {start_t.numel()}.")
        # Value check on CPU only, so a CUDA call never synchronises.
        if not start_t.is_cuda and bool(((start_t < 0) | (start_t > seqlen)).any()):
            raise KernelInputError(f"start (left padding) must lie in [0, T={seqlen}].")
    if offset is None:
        sink_rows = torch.full((bsz,), sink, dtype=torch.int64, device=q.device)
    else:
        offset_t = torch.as_tensor(offset, device=q.device).to(torch.int64).reshape(-1)
        if offset_t.numel() != bsz:
            raise KernelInputError(f"offset must have one entry per batch row ({bsz}), got {offset_t.numel()}.")
        sink_rows = (sink - offset_t).clamp(min=0)
    return windows_t, start_t, sink_rows


def _key_ranges(c0: int, c1: int, window: int, sink: int, smin: int, smax: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of keys that queries c0..c1-1 of one KV head may see (any row)."""
    band = (max(c0 - window + 1, smin), c1) if window > 0 else (c1, c1)
    sink_rng = (smin, min(smax + sink, c1))
    if sink_rng[0] >= sink_rng[1]:
        return [band] if band[0] < band[1] else []
    if band[0] >= band[1]:
        return [sink_rng]
    if sink_rng[1] >= band[0]:
        return [(min(sink_rng[0], band[0]), c1)]
    return [sink_rng, band]


def _gather(x: torch.Tensor, ranges: list[tuple[int, int]], head: int, dtype: torch.dtype) -> torch.Tensor:
    """x [B, T, H, D] -> [B, K, D] in ``dtype``: the rows of ``ranges`` for one KV head."""
    parts = [x[:, a:b, head, :] for a, b in ranges]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out.to(dtype)


def _visible(
    qpos: torch.Tensor, kidx: torch.Tensor, start: torch.Tensor, sink: torch.Tensor, window: int
) -> torch.Tensor:
    """[B, C, K] bool: the sink + window mask of DESIGN.md section 3 on positions (padding excluded)."""
    qi = qpos.view(1, -1, 1)
    kj = kidx.view(1, 1, -1)
    st = start.view(-1, 1, 1)
    return (kj <= qi) & (kj >= st) & ((kj - st < sink.view(-1, 1, 1)) | (qi - kj < window))


def _chunk_head(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    qpos: torch.Tensor,
    kidx: torch.Tensor,
    start: torch.Tensor,
    sink: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one chunk for one KV head group.

    Args:
        qh: [B, G, C, D] scaled queries (compute dtype).
        kh, vh: [B, K, D] keys/values of the chunk's key ranges.
        qpos: [C] query token indices; kidx: [K] key token indices.
        start: [B] left padding per row; sink: [B] sink tokens of each row inside this call.

    Returns:
        o: [B, G, C, D] and lse: [B, G, C] (compute dtype; -inf where nothing is visible).
    """
    bsz, g, c, d = qh.shape
    scores = torch.matmul(qh.reshape(bsz, g * c, d), kh.transpose(1, 2)).view(bsz, g, c, -1)
    visible = _visible(qpos, kidx, start, sink, window)
    scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    finite = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(finite, lse, torch.zeros_like(lse)).unsqueeze(-1))
    out = torch.matmul(probs.view(bsz, g * c, -1), vh).view(bsz, g, c, d)
    return out, lse


def _fused_mask(
    qpos: torch.Tensor,
    kidx: torch.Tensor,
    start: torch.Tensor,
    sink: torch.Tensor,
    window: int,
    all_seen: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA's boolean mask [B, 1, C, K] for one chunk and window, and the rows that see a key (None: all do).

    Rows that see nothing would give NaN; they are let to see key 0 and zeroed by the caller.
    """
    visible = _visible(qpos, kidx, start, sink, window)
    if all_seen:
        return visible.unsqueeze(1), None
    seen = visible.any(dim=-1)
    visible[..., 0] |= ~seen
    return visible.unsqueeze(1), seen


def _chunk_head_fused(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    mask: torch.Tensor,
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """`_chunk_head` without the lse, through PyTorch's fused SDPA with a boolean mask (fast on CPU).

    ``qh`` [B, G, C, D] is already scaled, so SDPA runs with scale 1; ``mask`` and ``seen`` come from
    `_fused_mask`.
    """
    bsz, g, c, d = qh.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        qh,
        kh.unsqueeze(1).expand(bsz, g, -1, d),
        vh.unsqueeze(1).expand(bsz, g, -1, d),
        attn_mask=mask,
        scale=1.0,
    )
    if seen is None:
        return out
    return out * seen.view(bsz, 1, c, 1).to(out.dtype)


def _auto_chunk(seqlen: int, rows: int, sink: int, windows: list[int]) -> int:
    """Queries per chunk: about half the typical window (so a chunk's band wastes little work), capped
    so one score matrix stays near ``_SCORE_BUDGET`` elements."""
    typical = sorted(windows)[len(windows) // 2] if windows else seqlen
    keys_est = max(1, min(seqlen, sink + max([*windows, 1]) + 64))
    cap = max(16, _SCORE_BUDGET // max(1, rows * keys_est))
    return max(16, min(cap, max(64, typical // 2)))


def reference_moa_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    chunk_size: int | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention where KV head h sees its sink plus a window of ``windows[h]`` tokens.

    Key j is visible to query i (positions, left padding excluded) iff
    ``j <= i and (j < sink or i - j < windows[h])``.

    Args:
        q: [B, T, HQ, D]; query head hq uses KV head ``hq // (HQ // H)``.
        k, v: [B, T, H, D], same dtype as q.
        sink: number of sink tokens (positions 0..sink-1 are always visible).
        windows: int [H], band width per KV head (may exceed T, may be <= 0).
        start: int [B], left padding per row; padded query rows output 0.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the natural-log sum of exp of the scaled scores.
        chunk_size: queries per chunk (default: sized to keep one score matrix near 16M elements).
        offset: int [B], position of each row's first real token (default 0): a prompt that continues
            an earlier one. Positions become ``t - start[b] + offset[b]``; only the sink test changes.

    Returns:
        o: [B, T, HQ, D] in q's dtype; with ``return_lse`` also lse: [B, HQ, T] float32
        (-inf for rows that see nothing). fp64 inputs give fp64 lse.
    """
    windows_t, start_t, sink_rows = check_prefill_inputs(q, k, v, sink, windows, start, offset)
    bsz, seqlen, hq, dim = q.shape
    h = k.shape[2]
    g = hq // h
    sm_scale = default_scale(dim, scale)
    cdt = compute_dtype(q.dtype)
    win = [int(w) for w in windows_t.tolist()]
    smin = int(start_t.min()) if bsz > 0 else 0
    smax = int(start_t.max()) if bsz > 0 else 0
    sink_max = int(sink_rows.max()) if bsz > 0 else 0
    if chunk_size is None:
        chunk_size = _auto_chunk(seqlen, bsz * g, sink_max, win)
    if chunk_size <= 0:
        raise KernelInputError(f"chunk_size must be positive, got {chunk_size}.")
    lse_dtype = torch.float64 if cdt == torch.float64 else torch.float32
    out = torch.zeros_like(q)
    lse_out = torch.full((bsz, hq, seqlen), float("-inf"), dtype=lse_dtype, device=q.device)
    if bsz == 0 or seqlen == 0:
        return (out, lse_out) if return_lse else out
    arange = torch.arange(seqlen, device=q.device)
    fused = not return_lse and cdt != torch.float64
    # Without left padding every query sees a key (itself, or key 0 of the sink) unless its head has no
    # window and its row no sink: then the masks need no "sees nothing" repair.
    sinks_everywhere = bsz > 0 and bool((sink_rows > 0).all())
    for c0 in range(smin, seqlen, chunk_size):
        c1 = min(seqlen, c0 + chunk_size)
        qpos = arange[c0:c1]
        qc = q[:, c0:c1].to(cdt) * sm_scale
        masks: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # per window: shared by its heads
        for head in range(h):
            ranges = _key_ranges(c0, c1, win[head], sink_max, smin, smax)
            if not ranges:
                continue
            kidx = torch.cat([arange[a:b] for a, b in ranges])
            qh = qc[:, :, head * g : (head + 1) * g, :].permute(0, 2, 1, 3)
            kh, vh = _gather(k, ranges, head, cdt), _gather(v, ranges, head, cdt)
            if fused:
                if win[head] not in masks:
                    all_seen = smax == 0 and (win[head] > 0 or sinks_everywhere)
                    masks[win[head]] = _fused_mask(qpos, kidx, start_t, sink_rows, win[head], all_seen)
                o_h = _chunk_head_fused(qh, kh, vh, *masks[win[head]])
            else:
                o_h, l_h = _chunk_head(qh, kh, vh, qpos, kidx, start_t, sink_rows, win[head])
                lse_out[:, head * g : (head + 1) * g, c0:c1] = l_h.to(lse_dtype)
            out[:, c0:c1, head * g : (head + 1) * g, :] = o_h.permute(0, 2, 1, 3).to(q.dtype)
    if return_lse:
        return out, lse_out
    return out
