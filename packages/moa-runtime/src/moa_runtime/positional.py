"""Chunked attention over explicit token positions: the generic path of moa-runtime.

Used where the packed-cache fast paths (`moa_prefill` on a fresh cache, `moa_decode` for one new token)
do not apply: new tokens prefilled on top of an existing cache (multi-turn, chunked prefill), padding
that is not left padding, and models run without a `MoACache`. Each KV head attends over its own key set
(its cached slots plus the new keys), with the visibility rule of DESIGN.md section 3 evaluated on
absolute positions: key j is visible to query i iff ``j <= i and (j < sink or i - j < window)``.
Memory is O(B x G x chunk x keys) per step, never O(HQ x T^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["positional_attention"]

# Score elements per (head, query chunk) matrix.
_SCORE_BUDGET = 1 << 22


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
        kh = keys[head].to(cdt)
        vh = values[head].to(cdt)
        nk = kh.shape[1]
        if nk == 0:
            continue
        chunk = max(1, min(seqlen, _SCORE_BUDGET // max(1, bsz * g * nk)))
        kj = key_pos[head].unsqueeze(1)
        kv = key_valid[head].unsqueeze(1)
        win = int(windows[head])
        for c0 in range(0, seqlen, chunk):
            c1 = min(seqlen, c0 + chunk)
            qh = q[:, head * g : (head + 1) * g, c0:c1].to(cdt) * scale
            scores = torch.matmul(qh.reshape(bsz, g * (c1 - c0), dim), kh.transpose(1, 2))
            scores = scores.view(bsz, g, c1 - c0, nk)
            qi = q_pos[:, c0:c1].unsqueeze(2)
            visible = kv & q_valid[:, c0:c1].unsqueeze(2) & (kj <= qi) & ((kj < sink) | (qi - kj < win))
            scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
            lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
            probs = torch.exp(scores - lse)
            o = torch.matmul(probs.view(bsz, g * (c1 - c0), nk), vh).view(bsz, g, c1 - c0, dim)
            out[:, c0:c1, head * g : (head + 1) * g] = o.transpose(1, 2).to(q.dtype)
    return out
