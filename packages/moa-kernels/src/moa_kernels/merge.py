"""Merge two attention results over disjoint key sets through their log-sum-exps."""

from __future__ import annotations

import torch

__all__ = ["merge_attention"]


def merge_attention(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over keys A u B from the results over A and over B.

    ``lse = logaddexp(lse_a, lse_b)``, ``o = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b``; a side
    with lse = -inf (no visible key) contributes nothing, and both -inf gives o = 0, lse = -inf.

    Args:
        o_a, o_b: [..., D] (any float dtype; the result has o_a's dtype).
        lse_a, lse_b: [...], o's shape without D (e.g. ``lse.transpose(1, 2)`` for moa_prefill's
            [B, HQ, T] next to o [B, T, HQ, D]).

    Returns:
        o: [..., D] and lse: [...] (float32, or float64 for fp64 inputs).
    """
    dt = torch.float64 if lse_a.dtype == torch.float64 else torch.float32
    la, lb = lse_a.to(dt), lse_b.to(dt)
    lse = torch.logaddexp(la, lb)
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    wa = torch.exp(la - safe).unsqueeze(-1)
    wb = torch.exp(lb - safe).unsqueeze(-1)
    o = wa * o_a.to(dt) + wb * o_b.to(dt)
    return o.to(o_a.dtype), lse
