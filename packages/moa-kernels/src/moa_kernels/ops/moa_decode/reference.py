"""Pure-PyTorch ``moa_decode``: the CPU inference path and the test oracle of the Triton kernel.

One loop over KV heads; per head, one batched matmul over the longest valid prefix of the head's
segment across rows (rows with fewer valid slots are masked with -inf). The G query heads of a
group share the matmul (no repeat_kv).
"""

from __future__ import annotations

import torch

from moa_kernels._checks import KernelInputError, compute_dtype, default_scale

__all__ = ["reference_moa_decode", "check_decode_inputs"]


def check_decode_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate decode inputs; return ``seg_start`` int64 [H] and ``lengths`` int64 [B, H] on q's device.

    Shapes, dtypes and devices are always checked; the values of ``seg_start``/``lengths`` only when
    q is on the CPU (reading them from a GPU would synchronise).

    Raises:
        KernelInputError: naming the first problem found.
    """
    if q.dim() != 3:
        raise KernelInputError(f"q must be [B, HQ, D], got shape {tuple(q.shape)}.")
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise KernelInputError("k_cache and v_cache must both be [B, M, D] with the same shape.")
    bsz, hq, dim = q.shape
    if k_cache.shape[0] != bsz or k_cache.shape[2] != dim:
        raise KernelInputError(f"k_cache must be [B={bsz}, M, D={dim}], got {tuple(k_cache.shape)}.")
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise KernelInputError(f"q and the caches must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}.")
    if not q.is_floating_point():
        raise KernelInputError(f"q must be floating point, got {q.dtype}.")
    if q.device != k_cache.device or q.device != v_cache.device:
        raise KernelInputError("q and the caches must be on the same device.")
    seg = torch.as_tensor(seg_start, device=q.device).to(torch.int64).reshape(-1)
    h = seg.numel()
    if h == 0 or hq % h != 0:
        raise KernelInputError(f"the number of query heads ({hq}) must be a multiple of len(seg_start) ({h}).")
    lens = torch.as_tensor(lengths, device=q.device).to(torch.int64)
    if lens.shape != (bsz, h):
        raise KernelInputError(f"lengths must be [B={bsz}, H={h}], got {tuple(lens.shape)}.")
    # Value checks read the tensors back: done on CPU only, so a CUDA call never synchronises.
    if not lens.is_cuda:
        if bool((lens < 0).any()) or bool((seg < 0).any()):
            raise KernelInputError("seg_start and lengths must be non-negative.")
        if bsz > 0 and bool(((seg.view(1, -1) + lens) > k_cache.shape[1]).any()):
            raise KernelInputError(f"a segment runs past the end of the cache (M={k_cache.shape[1]}).")
    return seg, lens


def reference_moa_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One query token per row against the packed per-head cache.

    Args:
        q: [B, HQ, D]; query head hq uses KV head ``hq // (HQ // H)``.
        k_cache, v_cache: [B, M, D]; KV head h owns slots ``[seg_start[h], seg_start[h] + span_h)``.
        seg_start: int [H], first slot of each KV head's segment.
        lengths: int [B, H], number of valid slots (from the segment start) of each (row, head);
            all valid slots are visible, in any order.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the natural-log sum of exp of the scaled scores.

    Returns:
        o: [B, HQ, D] in q's dtype (0 where length is 0); with ``return_lse`` also lse: [B, HQ]
        float32 (-inf where length is 0; fp64 inputs give fp64).
    """
    seg, lens = check_decode_inputs(q, k_cache, v_cache, seg_start, lengths)
    bsz, hq, dim = q.shape
    h = seg.numel()
    g = hq // h
    sm_scale = default_scale(dim, scale)
    cdt = compute_dtype(q.dtype)
    lse_dtype = torch.float64 if cdt == torch.float64 else torch.float32
    out = torch.zeros_like(q)
    lse_out = torch.full((bsz, hq), float("-inf"), dtype=lse_dtype, device=q.device)
    seg_list = seg.tolist()
    max_len = lens.max(dim=0).values.tolist() if bsz > 0 else [0] * h
    min_len = lens.min(dim=0).values.tolist() if bsz > 0 else [0] * h
    slots = torch.arange(max([*max_len, 0]), device=q.device)
    for head in range(h):
        n = int(max_len[head])
        if n == 0:
            continue
        s = int(seg_list[head])
        kh = k_cache[:, s : s + n].to(cdt)
        vh = v_cache[:, s : s + n].to(cdt)
        qh = q[:, head * g : (head + 1) * g].to(cdt) * sm_scale
        scores = torch.matmul(qh, kh.transpose(1, 2))
        if int(min_len[head]) < n:
            invalid = slots[:n].view(1, 1, n) >= lens[:, head].view(-1, 1, 1)
            scores = scores.masked_fill(invalid, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        probs = torch.exp(scores - safe.unsqueeze(-1))
        out[:, head * g : (head + 1) * g] = torch.matmul(probs, vh).to(q.dtype)
        lse_out[:, head * g : (head + 1) * g] = lse.to(lse_dtype)
    if return_lse:
        return out, lse_out
    return out
