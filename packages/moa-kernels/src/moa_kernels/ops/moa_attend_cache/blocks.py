"""``blockwise_attend_cache``: the cache half of a chunked prefill on the CPU, as mask-free fused attention.

When every row has written the same ``seen = p0`` tokens and the new tokens have no padding, the
keys of KV head h with window ``w`` are the sink slots (positions ``< min(S, p0)``) and the ring,
which holds positions ``[max(S, p0 - w), p0)`` (``L`` of them) in rotated order. New token ``a``
(position ``p0 + a``) sees ring position ``p`` iff ``p >= p0 + a - w + 1``. In the ring's reversed
position order ``r = p0 - 1 - p`` that is ``r <= w - 2 - a``: only the first ``nq = min(T, w - 1)``
new tokens see any ring key, and with ``f = max(w - 1 - T, 0)``

* ring keys ``r < f`` are seen by all of them (unmasked, together with the sink),
* ring keys ``r >= f`` form a triangle that is causal (top-left) once the queries are reversed,
* tokens ``a >= nq`` see the sink only.

The pieces are merged through their log-sum-exps, as in `moa_kernels.ops.moa_prefill.blocks`.
The test oracle is `reference_moa_attend_cache`.

`blockwise_continue_prefill` does the whole of such a chunk (ring and new keys) in one pass, when the rows have
seen at least the sink; the runtime prefers it for chunked prefill.
"""

from __future__ import annotations

import torch

from moa_kernels._checks import KernelInputError, default_scale
from moa_kernels.ops.moa_prefill.blocks import _attend, _late_band, _merge_into

__all__ = ["blockwise_attend_cache", "blockwise_continue_prefill"]


def _ring(seg: torch.Tensor, sink: int, window: int, first: int, last: int) -> torch.Tensor:
    """Keys of positions ``first..last-1`` (``>= sink``, inside the ring) from one head's segment [B, span, D],
    in position order: at most two slices of the rotated ring."""
    a = sink + (first - sink) % window
    n = last - first
    if a + n <= sink + window:
        return seg[:, a : a + n]
    return torch.cat([seg[:, a : sink + window], seg[:, sink : sink + n - (sink + window - a)]], dim=1)


def blockwise_attend_cache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: list[int],
    seen: int,
    sink: int,
    windows: list[int],
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference_moa_attend_cache` when every row has seen ``seen`` tokens and the new ones have no padding.

    Args:
        q: [B, T, HQ, D]; k_cache, v_cache: [B, M, D] in the runtime's packed ring layout.
        seg_start, windows: H Python integers; seen: tokens already cached in every row (Python int).
        sink: S; scale: default ``1 / sqrt(D)``.

    Returns:
        o: [B, T, HQ, D] in q's dtype and lse: [B, HQ, T] float32 (float64 for fp64); a token that sees
        no cached key has o = 0, lse = -inf.
    """
    bsz, seqlen, hq, dim = q.shape
    h = len(windows)
    g = hq // h
    sm_scale = default_scale(dim, scale)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros_like(q)
    lse_out = torch.full((bsz, hq, seqlen), float("-inf"), dtype=lse_dtype, device=q.device)
    n_sink = min(sink, seen)
    flip = (2,)
    for head, (s0, w) in enumerate(zip(seg_start, windows, strict=True)):
        group = slice(head * g, (head + 1) * g)
        qh = q[:, :, group].transpose(1, 2)
        kseg, vseg = k_cache[:, s0 : s0 + sink + max(w, 0)], v_cache[:, s0 : s0 + sink + max(w, 0)]
        ring_len = seen - max(sink, seen - w) if w > 0 else 0
        nq = min(seqlen, max(w - 1, 0)) if ring_len > 0 else 0
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        if nq > 0:
            f = max(w - 1 - seqlen, 0)
            full = min(ring_len, f)
            q_ring = qh[:, :, :nq]
            if full + n_sink > 0:
                kf = torch.cat([kseg[:, :n_sink], _ring(kseg, sink, w, seen - full, seen)], dim=1)
                vf = torch.cat([vseg[:, :n_sink], _ring(vseg, sink, w, seen - full, seen)], dim=1)
                parts.append(_attend(q_ring, kf.unsqueeze(1), vf.unsqueeze(1), False, sm_scale))
            if ring_len > f:
                # reversed ring keys r in [f, ring_len) = positions [seen - ring_len, seen - f), newest first
                kt = _ring(kseg, sink, w, seen - ring_len, seen - f).flip((1,)).unsqueeze(1)
                vt = _ring(vseg, sink, w, seen - ring_len, seen - f).flip((1,)).unsqueeze(1)
                o_t, l_t = _attend(q_ring.flip(flip), kt, vt, True, sm_scale)
                parts.append((o_t.flip(flip), l_t.flip(flip)))
            o, lse = parts[0]
            for o_i, lse_i in parts[1:]:
                _merge_into(o, lse, o_i, lse_i)
            out[:, :nq, group] = o.transpose(1, 2).to(q.dtype)
            lse_out[:, group, :nq] = lse.to(lse_dtype)
        if nq < seqlen and n_sink > 0:
            ks, vs = kseg[:, :n_sink].unsqueeze(1), vseg[:, :n_sink].unsqueeze(1)
            o, lse = _attend(qh[:, :, nq:], ks, vs, False, sm_scale)
            out[:, nq:, group] = o.transpose(1, 2).to(q.dtype)
            lse_out[:, group, nq:] = lse.to(lse_dtype)
    return out, lse_out


def blockwise_continue_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: list[int],
    seen: int,
    sink: int,
    windows: list[int],
    scale: float | None = None,
) -> torch.Tensor:
    """New tokens after ``seen`` cached ones (a chunked prefill): attention over the cache and the new keys at once.

    Every row has cached the same ``seen >= sink`` tokens and the new ones have no padding. For KV head h with
    window ``w``, the ring's last ``R = min(w - 1, seen - sink)`` positions (in position order) and the new keys
    form one contiguous band sequence, in which new token ``a`` sees the indices ``[R + a - w + 1, R + a]``
    (clipped at 0). Its first ``w - R`` tokens see the whole sequence up to themselves (an unmasked call over the
    ring part merged with a causal call over the new part); the later ones run as the stacked blocks of
    `blockwise_moa_prefill`; the sink is one more call, merged through the log-sum-exps. It gives what
    `blockwise_attend_cache` merged with `blockwise_moa_prefill` at offset ``seen`` gives, with fewer calls and
    merges. The test oracle is the dense masked prefill of the whole sequence.

    Args:
        q: [B, T, HQ, D]; k, v: [B, T, H, D], the new tokens; k_cache, v_cache: [B, M, D] in the runtime's packed
            ring layout.
        seg_start, windows: H Python integers; seen: tokens already cached in every row (``>= sink``).
        sink: S; scale: default ``1 / sqrt(D)``.

    Returns:
        o: [B, T, HQ, D] in q's dtype.
    """
    bsz, seqlen, hq, dim = q.shape
    h = len(windows)
    g = hq // h
    if seen < sink:
        raise KernelInputError(f"blockwise_continue_prefill needs seen >= sink, got seen {seen} < sink {sink}.")
    sm_scale = default_scale(dim, scale)
    out = torch.empty_like(q)
    for head, (s0, w) in enumerate(zip(seg_start, windows, strict=True)):
        group = slice(head * g, (head + 1) * g)
        qh = q[:, :, group].transpose(1, 2)
        seg_k, seg_v = k_cache[:, s0 : s0 + sink + max(w, 0)], v_cache[:, s0 : s0 + sink + max(w, 0)]
        o: torch.Tensor | None = None
        if w > 0:
            ring = min(w - 1, seen - sink)
            kb = torch.cat([_ring(seg_k, sink, w, seen - ring, seen), k[:, :, head]], dim=1).unsqueeze(1)
            vb = torch.cat([_ring(seg_v, sink, w, seen - ring, seen), v[:, :, head]], dim=1).unsqueeze(1)
            early = min(seqlen, w - ring)
            new_k, new_v = kb[:, :, ring : ring + early], vb[:, :, ring : ring + early]
            o_e, lse_e = _attend(qh[:, :, :early], new_k, new_v, True, sm_scale)
            if ring > 0:
                o_r, lse_r = _attend(qh[:, :, :early], kb[:, :, :ring], vb[:, :, :ring], False, sm_scale)
                _merge_into(o_e, lse_e, o_r, lse_r)
            if early == seqlen:
                o, lse = o_e, lse_e
            else:
                o = torch.empty(bsz, g, seqlen, dim, dtype=o_e.dtype, device=q.device)
                lse = torch.empty(bsz, g, seqlen, dtype=lse_e.dtype, device=q.device)
                o[:, :, :early], lse[:, :, :early] = o_e, lse_e
                _late_band(qh, kb, vb, w, early, ring, sm_scale, o, lse)
        if sink > 0:
            o_s, lse_s = _attend(qh, seg_k[:, :sink].unsqueeze(1), seg_v[:, :sink].unsqueeze(1), False, sm_scale)
            if o is None:
                o, lse = o_s, lse_s
            else:
                _merge_into(o, lse, o_s, lse_s)
        if o is None:
            out[:, :, group] = 0
        else:
            out[:, :, group] = o.transpose(1, 2).to(q.dtype)
    return out
