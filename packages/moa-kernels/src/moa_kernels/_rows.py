"""Row by row over the real tokens of a left-padded batch: what the mask-free CPU paths do with padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["by_rows"]


def by_rows(
    q: torch.Tensor,
    starts: Sequence[int],
    attend: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``[B, T, HQ, D]`` and lse ``[B, HQ, T]`` from ``attend(b, s0)`` on row b's tokens ``s0:``.

    ``attend`` returns ``o [1, T - s0, HQ, D]`` and ``lse [1, HQ, T - s0]`` (or None); padding
    (t < ``starts[b]``) and rows of padding only keep output 0 and lse -inf, as the references do.
    """
    bsz, seqlen, hq, _ = q.shape
    out = torch.zeros_like(q)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse_out = torch.full((bsz, hq, seqlen), float("-inf"), dtype=lse_dtype, device=q.device)
    for b, s0 in enumerate(starts):
        if s0 < seqlen:
            o_b, lse_b = attend(b, s0)
            out[b, s0:] = o_b[0]
            if lse_b is not None:
                lse_out[b, :, s0:] = lse_b[0]
    return out, lse_out
