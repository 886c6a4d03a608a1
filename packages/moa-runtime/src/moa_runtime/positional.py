"""Chunked attention over explicit token positions: the generic path of moa-runtime.

Used where the packed-cache fast paths (`moa_prefill` on a fresh cache, `moa_decode` for one new token)
do not apply: new tokens prefilled on top of an existing cache (multi-turn, chunked prefill), padding
that is not left padding, and models run without a `MoACache`. Each KV head attends over its own key set
(its cached slots plus the new keys), with the visibility rule of DESIGN.md section 3 evaluated on
absolute positions: key j is visible to query i iff ``j <= i and (j < sink or i - j < window)``.
Memory is O(B x chunk x keys) per step (a boolean mask; SDPA's fused kernel does the softmax), never
O(HQ x T^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["positional_attention"]

# Elements of the boolean visibility mask per (head, query chunk).
_MASK_BUDGET = 1 << 24


def positional_attention(
    q: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    key_pos: Sequence[torch.Tensor],
    key_valid: Sequence[torch.Tensor],
    q_pos: torch.Tensor,
    q_valid: torch.Tensor,
    *,
    sink: int,
    windows: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """Masked attention of new queries over per-KV-head key sets, chunked over queries.

    Args:
        q: [B, HQ, T, D] queries (after RoPE); query head hq uses KV head ``hq // (HQ // H)``.
        keys, values: H tensors [B, K_h, D] (K_h may differ per head).
        key_pos: H int64 tensors [B, K_h], absolute positions of the keys.
        key_valid: H bool tensors [B, K_h], False for empty slots and padding.
        q_pos: int64 [B, T] absolute positions of the queries. q_valid: bool [B, T] (False = padding).
        sink: S. windows: H ints, the window of each KV head.
        scale: softmax scale.

    Returns:
        o: [B, T, HQ, D] in q's dtype; rows of padding queries (or that see nothing) are 0.
    """
    bsz, hq, seqlen, dim = q.shape
    h = len(keys)
    g = hq // h
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    out = q.new_zeros(bsz, seqlen, hq, dim)
    for head in range(h):
        nk = keys[head].shape[1]
        if nk == 0:
            continue
        win = int(windows[head])
        # Query chunks of a quarter window (at least 256): each attends only to the keys that one of its
        # rows may see, gathered first, so the work follows the band, not the whole key set.
        chunk = max(1, min(seqlen, max(256, win // 4), _MASK_BUDGET // max(1, bsz * nk)))
        for c0 in range(0, seqlen, chunk):
            c1 = min(seqlen, c0 + chunk)
            qv = q_valid[:, c0:c1]
            if not bool(qv.any()):
                continue
            qp = q_pos[:, c0:c1]
            lo = int(qp[qv].min())
            hi = int(qp[qv].max())
            kp = key_pos[head]
            candidate = key_valid[head] & (kp <= hi) & ((kp < sink) | (kp > lo - win))
            index = candidate.any(dim=0).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            kh = keys[head][:, index].to(cdt)
            vh = values[head][:, index].to(cdt)
            kj = kp[:, index].unsqueeze(1)
            qi = qp.unsqueeze(2)
            visible = (kj <= qi) & ((kj < sink) | (qi - kj < win))
            visible &= candidate[:, index].unsqueeze(1)
            visible &= qv.unsqueeze(2)
            seen = visible.any(dim=-1)
            # Rows that see nothing would give NaN; let them see key 0 and zero them afterwards.
            visible[..., 0] |= ~seen
            n = kh.shape[1]
            o = F.scaled_dot_product_attention(
                q[:, head * g : (head + 1) * g, c0:c1].to(cdt),
                kh.unsqueeze(1).expand(bsz, g, n, dim),
                vh.unsqueeze(1).expand(bsz, g, n, dim),
                attn_mask=visible.unsqueeze(1),
                scale=scale,
            )
            o = o * seen.view(bsz, 1, c1 - c0, 1).to(o.dtype)
            out[:, c0:c1, head * g : (head + 1) * g] = o.transpose(1, 2).to(q.dtype)
    return out
