"""Triton ``moa_decode``: split-KV flash-decoding over the packed ragged per-head cache.

Stage 1 (:func:`moa_decode_fwd_kernel`): program (split s, row b, KV head h) attends the G query
heads of the group to slots ``[s * split, (s + 1) * split)`` of the head's valid prefix and writes a
partial output and its log-sum-exp. Stage 2 (:func:`moa_decode_merge_kernel`) merges the splits.
The math is in this folder's README.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moa_kernels._checks import KernelInputError, check_out_buffer, default_scale
from moa_kernels.ops.moa_decode.reference import check_decode_inputs

__all__ = ["moa_decode_fwd_kernel", "moa_decode_merge_kernel", "moa_decode_fwd", "plan_splits"]

_LOG2E = 1.4426950408889634


@triton.jit
def moa_decode_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    seg_ptr,
    len_ptr,
    o_part_ptr,
    lse_part_ptr,
    qk_scale,
    split,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_vb,
    stride_vt,
    stride_lenb,
    stride_opb,
    stride_oph,
    stride_ops,
    stride_lpb,
    stride_lph,
    GROUP: tl.constexpr,
    ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial attention of one split of one (row, KV head) segment; all GROUP query heads at once.

    Writes o_part[b, hq, s, :] (normalised within the split, fp32) and lse_part[b, hq, s] (natural
    log, -inf for an empty split). Last dims of q, k, v must be contiguous.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_KV_HEADS
    h = pid_bh % NUM_KV_HEADS
    b64 = b.to(tl.int64)
    seg = tl.load(seg_ptr + h).to(tl.int64)
    length = tl.load(len_ptr + b64 * stride_lenb + h).to(tl.int32)
    lo = pid_s * split
    hi = tl.minimum(lo + split, length)

    rows = tl.arange(0, ROWS)
    row_ok = rows < GROUP
    hq = h * GROUP + rows
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + b64 * stride_qb + hq[:, None] * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & d_mask[None, :],
        other=0.0,
    )
    k_base = k_ptr + b64 * stride_kb + seg * stride_kt
    v_base = v_ptr + b64 * stride_vb + seg * stride_vt

    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        slot = n0 + offs_n
        in_range = slot < hi
        kv_mask = in_range[:, None] & d_mask[None, :]
        k = tl.load(k_base + slot[:, None].to(tl.int64) * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + slot[:, None].to(tl.int64) * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(in_range[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    o_ptrs = o_part_ptr + b64 * stride_opb + hq[:, None] * stride_oph + pid_s * stride_ops + offs_d[None, :]
    tl.store(o_ptrs, out, mask=row_ok[:, None] & d_mask[None, :])
    tl.store(lse_part_ptr + b64 * stride_lpb + hq * stride_lph + pid_s, lse, mask=row_ok)


@triton.jit
def moa_decode_merge_kernel(
    o_part_ptr,
    lse_part_ptr,
    o_ptr,
    lse_ptr,
    num_splits,
    stride_opb,
    stride_oph,
    stride_ops,
    stride_lpb,
    stride_lph,
    stride_ob,
    stride_oh,
    stride_lb,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    """o[b, hq] = sum_s exp(lse_s - lse) o_s with lse = logsumexp_s lse_s; 0 and -inf if all splits are empty."""
    pid = tl.program_id(0)
    b = pid // NUM_Q_HEADS
    hq = pid % NUM_Q_HEADS
    b64 = b.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < num_splits
    lse_s = tl.load(lse_part_ptr + b64 * stride_lpb + hq * stride_lph + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse_s - m_safe)
    total = tl.sum(w, 0)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    o_s = tl.load(
        o_part_ptr + b64 * stride_opb + hq * stride_oph + offs_s[:, None] * stride_ops + offs_d[None, :],
        mask=s_ok[:, None] & d_mask[None, :],
        other=0.0,
    )
    seen = total > 0.0
    out = tl.sum(o_s * w[:, None], 0) / tl.where(seen, total, 1.0)
    tl.store(o_ptr + b64 * stride_ob + hq * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=d_mask)
    if WRITE_LSE:
        lse = tl.where(seen, m_safe + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
        tl.store(lse_ptr + b64 * stride_lb + hq, lse)


def plan_splits(max_length: int, programs_per_split: int, device: torch.device, block_n: int) -> tuple[int, int]:
    """Choose (split size in slots, number of splits) so that the GPU gets a few waves of programs.

    ``programs_per_split`` is B x H; the target is ~4 programs per SM (fewer in the interpreter),
    each split a multiple of ``block_n`` slots and at least 2 tiles long, at most 256 splits.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = 4 * sms
    else:
        target = 4
    want_splits = max(1, triton.cdiv(target, max(1, programs_per_split)))
    split = triton.cdiv(max(1, max_length), want_splits)
    split = max(2 * block_n, triton.cdiv(split, block_n) * block_n)
    num_splits = max(1, triton.cdiv(max_length, split))
    if num_splits > 256:
        split = triton.cdiv(triton.cdiv(max_length, 256), block_n) * block_n
        num_splits = triton.cdiv(max_length, split)
    return split, num_splits


def moa_decode_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    seg_start: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
    max_length: int | None = None,
    split_size: int | None = None,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
    block_n: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch the split and merge kernels; same contract as ``reference_moa_decode``.

    Args:
        q: [B, HQ, D] fp32/fp16/bf16; k_cache, v_cache: [B, M, D].
        seg_start: int [H]; lengths: int [B, H].
        scale, return_lse: as in ``moa_decode``.
        max_length: an upper bound of ``lengths`` (e.g. the largest span); when omitted it is read
            from ``lengths``, which synchronises with the GPU.
        split_size: override of the slots per split (a multiple of the kernel's key tile).
        out, lse_out: optional preallocated outputs (contiguous, q's dtype / float32); every element
            is written.
        block_n: override of the key tile (slots per loop step; default 64 on CUDA, 16 interpreted).

    Returns:
        o: [B, HQ, D] (q's dtype) and, with ``return_lse``, lse: [B, HQ] float32.
    """
    seg, lens = check_decode_inputs(q, k_cache, v_cache, seg_start, lengths)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelInputError(f"the Triton moa_decode supports fp32/fp16/bf16, got {q.dtype}.")
    bsz, hq, dim = q.shape
    h = seg.numel()
    group = hq // h
    q, k_cache, v_cache = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_cache, v_cache))
    lens = lens.to(torch.int32).contiguous()
    seg = seg.contiguous()
    out = check_out_buffer(out, tuple(q.shape), q.dtype, q.device, "out")
    lse = check_out_buffer(
        lse_out if return_lse else None, (bsz, hq) if return_lse else (1, 1), torch.float32, q.device, "lse_out"
    )
    if bsz == 0:
        return (out, lse) if return_lse else out
    if max_length is None:
        max_length = int(lens.max())
    block_n = block_n or (64 if q.is_cuda else 16)
    if split_size is None:
        split, num_splits = plan_splits(max_length, bsz * h, q.device, block_n)
    else:
        split, num_splits = split_size, max(1, triton.cdiv(max_length, split_size))
    o_part = torch.empty((bsz, hq, num_splits, dim), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((bsz, hq, num_splits), dtype=torch.float32, device=q.device)
    block_d = max(triton.next_power_of_2(dim), 16)
    moa_decode_fwd_kernel[(num_splits, bsz * h)](
        q, k_cache, v_cache, seg, lens, o_part, lse_part, default_scale(dim, scale) * _LOG2E, split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        lens.stride(0), o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        GROUP=group, ROWS=max(16, triton.next_power_of_2(group)), HEAD_DIM=dim, BLOCK_D=block_d,
        BLOCK_N=block_n, NUM_KV_HEADS=h, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=3,
    )  # fmt: skip
    moa_decode_merge_kernel[(bsz * hq,)](
        o_part, lse_part, out, lse, num_splits,
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        NUM_Q_HEADS=hq, HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_S=max(triton.next_power_of_2(num_splits), 2),
        WRITE_LSE=return_lse, num_warps=4,
    )  # fmt: skip
    if return_lse:
        return out, lse
    return out
