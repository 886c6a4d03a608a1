"""Test helpers shared by moa-kernels' tests and benchmarks (and usable by moa-runtime's tests).

* :func:`dense_oracle_prefill` -- dense SDPA with an explicit boolean mask (the independent oracle).
* :func:`visibility_mask` -- the mask of DESIGN.md section 3 on token indices with left padding.
* :func:`dense_oracle_decode` -- softmax over the valid slots of each (row, query head), one at a time.
* :func:`assert_flash_close` -- the flash-attention tolerance rule.
* :class:`RingCache` -- the packed per-layer cache exactly as the runtime lays it out: per KV head h a
  segment of ``span_h = sink + window_h`` slots, sink slots [0, sink) hold positions 0..sink-1, and
  position p >= sink lives at slot ``sink + (p - sink) % window_h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["visibility_mask", "dense_oracle_prefill", "dense_oracle_decode", "assert_flash_close", "RingCache"]


def visibility_mask(
    seqlen: int, sink: int, windows: torch.Tensor, start: torch.Tensor, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [B, H, T, T]: True where query token t may see key token t'.

    Args:
        seqlen: T. sink: S. windows: int [H]. start: int [B] left padding per row.
        offset: int [B] position of each row's first real token (default 0).
    """
    t = torch.arange(seqlen, device=start.device)
    qi = t.view(1, 1, -1, 1)
    kj = t.view(1, 1, 1, -1)
    st = start.to(torch.int64).view(-1, 1, 1, 1)
    w = windows.to(device=start.device, dtype=torch.int64).view(1, -1, 1, 1)
    off = 0 if offset is None else offset.to(device=start.device, dtype=torch.int64).view(-1, 1, 1, 1)
    return (kj <= qi) & (kj >= st) & (qi >= st) & ((kj - st + off < sink) | (qi - kj < w))


def dense_oracle_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None = None,
    scale: float | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense SDPA with the explicit mask; K/V repeated per query head. O(T^2) memory: tests only.

    Args:
        q: [B, T, HQ, D]; k, v: [B, T, H, D].

    Returns:
        o: [B, T, HQ, D] in q's dtype (0 on rows that see nothing) and lse: [B, HQ, T] in q's dtype
        computed in the same dtype (-inf on rows that see nothing).
    """
    bsz, seqlen, hq, dim = q.shape
    h = k.shape[2]
    g = hq // h
    if start is None:
        start = torch.zeros(bsz, dtype=torch.int64, device=q.device)
    mask = visibility_mask(seqlen, sink, windows, start.to(q.device), offset)
    mask = mask.repeat_interleave(g, dim=1)
    any_visible = mask.any(dim=-1, keepdim=True)
    safe_mask = mask | ~any_visible
    qt = q.transpose(1, 2)
    kt = k.transpose(1, 2).repeat_interleave(g, dim=1)
    vt = v.transpose(1, 2).repeat_interleave(g, dim=1)
    sm_scale = scale if scale is not None else dim**-0.5
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=safe_mask, scale=sm_scale)
    out = out.masked_fill(~any_visible, 0.0).transpose(1, 2).contiguous()
    scores = torch.matmul(qt, kt.transpose(-1, -2)) * sm_scale
    lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return out, lse


def dense_oracle_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force decode in q's dtype: for each (row, query head), softmax over its valid slots.

    Returns:
        o: [B, HQ, D] (0 where the length is 0) and lse: [B, HQ] (-inf there), both in q's dtype.
    """
    bsz, hq, dim = q.shape
    h = seg_start.numel()
    g = hq // h
    sm_scale = scale if scale is not None else dim**-0.5
    out = torch.zeros_like(q)
    lse = torch.full((bsz, hq), float("-inf"), dtype=q.dtype)
    for b in range(bsz):
        for head in range(hq):
            s = int(seg_start[head // g])
            n = int(lengths[b, head // g])
            if n == 0:
                continue
            scores = (k_cache[b, s : s + n] @ q[b, head]) * sm_scale
            out[b, head] = torch.softmax(scores, dim=0) @ v_cache[b, s : s + n]
            lse[b, head] = torch.logsumexp(scores, dim=0)
    return out, lse


def assert_flash_close(
    out: torch.Tensor, exact: torch.Tensor, lowp: torch.Tensor, *, atol: float, factor: float = 2.0
) -> None:
    """Flash-attention tolerance rule: ``max|out - exact| <= factor * max|lowp - exact| + atol``.

    Args:
        out: result under test. exact: the same quantity in fp64. lowp: the same computation done
            in plain PyTorch at the test's (low) precision. -inf entries must agree exactly.
    """
    exact = exact.double()
    out = out.double()
    lowp = lowp.double()
    ninf = torch.isneginf(exact)
    assert torch.equal(torch.isneginf(out), ninf), "-inf entries differ from the oracle"
    assert not torch.isnan(out).any(), "NaN in the output (an element was not written?)"
    fin = ~ninf
    err = (out[fin] - exact[fin]).abs().max().item() if fin.any() else 0.0
    ref_err = (lowp[fin] - exact[fin]).abs().max().item() if fin.any() else 0.0
    bound = factor * ref_err + atol
    assert err <= bound, f"max error {err:.3g} > {factor} x {ref_err:.3g} (PyTorch at low precision) + {atol:.1g}"


@dataclass
class RingCache:
    """Packed sink + ring cache of one layer, built token by token (test/benchmark helper).

    Attributes:
        k, v: [B, M, D] packed buffers, M = sum_h (sink + windows[h]).
        seg_start: int64 [H] first slot of each KV head's segment.
        lengths: int64 [B, H] valid slots per (row, head).
        seen: int64 [B] real tokens written per row (the next token's position).
        sink: S. windows: int64 [H].
    """

    k: torch.Tensor
    v: torch.Tensor
    seg_start: torch.Tensor
    lengths: torch.Tensor
    seen: torch.Tensor
    sink: int
    windows: torch.Tensor

    @classmethod
    def empty(
        cls, batch: int, head_dim: int, *, sink: int, windows: torch.Tensor, dtype: torch.dtype, device: str = "cpu"
    ) -> RingCache:
        """An empty cache; a head with window <= 0 keeps only its sink slots."""
        win = windows.to(torch.int64).cpu().clamp(min=0)
        spans = win + sink
        seg_start = torch.cumsum(spans, 0) - spans
        m = int(spans.sum())
        k = torch.zeros(batch, m, head_dim, dtype=dtype, device=device)
        h = win.numel()
        return cls(
            k=k,
            v=torch.zeros_like(k),
            seg_start=seg_start.to(device),
            lengths=torch.zeros(batch, h, dtype=torch.int64, device=device),
            seen=torch.zeros(batch, dtype=torch.int64, device=device),
            sink=sink,
            windows=win.to(device),
        )

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Write one token per row. k_new, v_new: [B, H, D]; valid: bool [B] (False = padding, skipped)."""
        bsz, h, _ = k_new.shape
        rows = torch.arange(bsz, device=k_new.device)
        if valid is not None:
            rows = rows[valid.to(k_new.device)]
        pos = self.seen[rows]
        for head in range(h):
            w = int(self.windows[head])
            in_sink = pos < self.sink
            if w <= 0:
                keep = in_sink
                slot = pos
            else:
                keep = torch.ones_like(in_sink)
                slot = torch.where(in_sink, pos, self.sink + (pos - self.sink) % w)
            r = rows[keep]
            s = self.seg_start[head] + slot[keep]
            self.k[r, s] = k_new[r, head]
            self.v[r, s] = v_new[r, head]
            self.lengths[rows, head] = torch.clamp(pos + 1, max=self.sink + w)
        self.seen[rows] = pos + 1

    def extend(self, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None) -> None:
        """Write a prompt token by token. k, v: [B, T, H, D]; start: int [B] left padding (skipped)."""
        bsz, seqlen = k.shape[:2]
        t_idx = torch.arange(seqlen, device=k.device)
        st = torch.zeros(bsz, dtype=torch.int64, device=k.device) if start is None else start.to(k.device)
        for t in range(seqlen):
            self.append(k[:, t], v[:, t], valid=t_idx[t] >= st)
