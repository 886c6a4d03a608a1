"""Triton ``moa_prefill``: flash attention that visits only each KV head's sink tiles and band tiles.

The math (mask, skipped tiles, bytes floor) is in this folder's README.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moa_kernels._checks import KernelInputError, check_out_buffer, default_scale
from moa_kernels.ops.moa_prefill.reference import check_prefill_inputs

__all__ = ["moa_prefill_fwd_kernel", "moa_prefill_fwd"]

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_range(
    acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b, lo, hi, sink, window, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax accumulation over key tokens [lo, hi), in tiles of BLOCK_N starting at lo.

    With MASKED the full token mask is applied per element; without it every (query, key) pair of
    every tile must be visible (the caller guarantees it) and no mask is computed.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        k_tok = n0 + offs_n
        if MASKED:
            kv_mask = (k_tok[:, None] < hi) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_base + k_tok[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + k_tok[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        elif BLOCK_D == HEAD_DIM:
            k = tl.load(k_base + k_tok[:, None] * stride_kt + offs_d[None, :])
            v = tl.load(v_base + k_tok[:, None] * stride_vt + offs_d[None, :])
        else:
            d_mask = offs_d[None, :] < HEAD_DIM
            k = tl.load(k_base + k_tok[:, None] * stride_kt + offs_d[None, :], mask=d_mask, other=0.0)
            v = tl.load(v_base + k_tok[:, None] * stride_vt + offs_d[None, :], mask=d_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            kt = k_tok[None, :]
            qt = q_tok[:, None]
            visible = (kt < hi) & (kt <= qt) & (kt >= start_b) & ((kt - start_b < sink) | (qt - kt < window))
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attend_split(
    acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b, lo, hi, full_lo, full_hi,
    sink, window, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Keys [lo, hi): masked tiles before ``full_lo``, unmasked tiles inside [full_lo, full_hi), masked rest.

    A tile [n0, n0 + BLOCK_N) is run unmasked only when n0 >= full_lo and n0 + BLOCK_N <= full_hi.
    """
    first_full = lo + tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK_N) * BLOCK_N
    lead_hi = tl.minimum(first_full, hi)
    n_full = tl.maximum(full_hi - first_full, 0) // BLOCK_N
    full_end = first_full + n_full * BLOCK_N
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b, lo, lead_hi, sink, window,
        qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, True, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b, first_full, full_end, sink,
        window, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, False, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b, tl.maximum(full_end, lead_hi),
        hi, sink, window, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, True, DOT_PRECISION,
    )  # fmt: skip
    return acc, m_i, l_i


@triton.jit
def moa_prefill_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    windows_ptr,
    start_ptr,
    sink_ptr,
    seqlen,
    qk_scale,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_lb,
    stride_lh,
    GROUP: tl.constexpr,
    GROUP_P2: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program = BLOCK_M query tokens x all GROUP query heads of one KV head of one row.

    The tile's rows are (token, query head) pairs, row r = token (r // GROUP_P2), head (r % GROUP_P2),
    so the group's K/V tiles are loaded once for all its query heads. Only two key ranges are
    visited: the sink tokens and the band of the tile; every other key tile is neither loaded nor
    computed. Last dims of q, k, v, o must be contiguous.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_KV_HEADS
    h = pid_bh % NUM_KV_HEADS
    b64 = b.to(tl.int64)
    start_b = tl.load(start_ptr + b).to(tl.int32)
    window = tl.load(windows_ptr + h).to(tl.int32)
    sink = tl.load(sink_ptr + b).to(tl.int32)

    rows = tl.arange(0, BLOCK_M * GROUP_P2)
    q_tok = pid_m * BLOCK_M + rows // GROUP_P2
    g = rows % GROUP_P2
    hq = h * GROUP + g
    row_ok = (q_tok < seqlen) & (g < GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    q_ptrs = q_ptr + b64 * stride_qb + q_tok[:, None] * stride_qt + hq[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b64 * stride_kb + h * stride_kh
    v_base = v_ptr + b64 * stride_vb + h * stride_vh

    acc = tl.zeros([BLOCK_M * GROUP_P2, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M * GROUP_P2], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M * GROUP_P2], dtype=tl.float32)

    tile_lo = pid_m * BLOCK_M
    tile_hi = tl.minimum(tile_lo + BLOCK_M, seqlen)
    # Sink range: key tokens [start_b, start_b + sink), causally cut at the tile's last query.
    # A sink tile needs no mask when it lies entirely at or before the tile's first query.
    sink_hi = tl.minimum(start_b + sink, tile_hi)
    acc, m_i, l_i = _attend_split(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b,
        start_b, sink_hi, start_b, tl.minimum(sink_hi, tile_lo + 1), sink, window, qk_scale,
        BLOCK_N, HEAD_DIM, BLOCK_D, DOT_PRECISION,
    )  # fmt: skip
    # Band range: keys within `window` of some query of the tile, minus what the sink range covered.
    # A band tile needs no mask when it is before the first query and within `window` of the last one.
    band_lo = tl.maximum(tl.maximum(tile_lo - window + 1, start_b), sink_hi)
    band_hi = tl.where(window > 0, tile_hi, band_lo)
    acc, m_i, l_i = _attend_split(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_d, q_tok, start_b,
        band_lo, band_hi, tl.maximum(tile_hi - window, start_b), tl.minimum(band_hi, tile_lo + 1), sink, window,
        qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, DOT_PRECISION,
    )  # fmt: skip

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptrs = o_ptr + b64 * stride_ob + q_tok[:, None] * stride_ot + hq[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_mask[None, :])
    if WRITE_LSE:
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(lse_ptr + b64 * stride_lb + hq * stride_lh + q_tok, lse, mask=row_ok)


def _tile_sizes(group_p2: int, head_dim: int, interpret: bool) -> tuple[int, int]:
    """(BLOCK_M tokens, BLOCK_N keys): about 128 (token, head) rows per program on GPU."""
    if interpret:
        # Small tiles: the interpreter's cost is per program, and tests need several tiles per row.
        return max(32 // group_p2, 1), 16
    # 128 rows per program; large groups take fewer tokens (tl.dot needs >= 16 rows: 128 // G * G).
    block_m = max(128 // group_p2, 1)
    block_n = 64 if head_dim <= 128 else 32
    return block_m, block_n


def moa_prefill_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sink: int,
    windows: torch.Tensor,
    start: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`moa_prefill_fwd_kernel`; same contract as ``reference_moa_prefill``.

    Args:
        q: [B, T, HQ, D] fp32/fp16/bf16; k, v: [B, T, H, D].
        sink, windows, start, scale, return_lse, offset: as in ``moa_prefill``.
        block_m, block_n: tile sizes override (tokens per query tile, keys per key tile).
        out, lse_out: optional preallocated outputs (contiguous, q's dtype / float32); every element
            is written.

    Returns:
        o: [B, T, HQ, D] (q's dtype) and, with ``return_lse``, lse: [B, HQ, T] float32.
    """
    windows_t, start_t, sink_rows = check_prefill_inputs(q, k, v, sink, windows, start, offset)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelInputError(f"the Triton moa_prefill supports fp32/fp16/bf16, got {q.dtype}.")
    bsz, seqlen, hq, dim = q.shape
    h = k.shape[2]
    group = hq // h
    group_p2 = triton.next_power_of_2(group)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = check_out_buffer(out, q.shape, q.dtype, q.device, "out")
    lse_shape = (bsz, hq, seqlen) if return_lse else (1, 1, 1)
    lse = check_out_buffer(lse_out if return_lse else None, lse_shape, torch.float32, q.device, "lse_out")
    # Clamp huge windows so in-kernel int32 arithmetic cannot overflow.
    windows_i = windows_t.clamp(max=seqlen + 1).to(torch.int32)
    start_i = start_t.to(torch.int32)
    sink_i = sink_rows.clamp(max=seqlen + 1).to(torch.int32)
    interpret = not q.is_cuda
    bm, bn = _tile_sizes(group_p2, dim, interpret)
    bm = block_m or bm
    bn = block_n or bn
    grid = (triton.cdiv(seqlen, bm), bsz * h)
    if bsz == 0 or seqlen == 0:
        return (out, lse) if return_lse else out
    moa_prefill_fwd_kernel[grid](
        q, k, v, out, lse, windows_i, start_i, sink_i,
        seqlen, default_scale(dim, scale) * _LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        GROUP=group, GROUP_P2=group_p2, HEAD_DIM=dim, BLOCK_D=max(triton.next_power_of_2(dim), 16),
        BLOCK_M=bm, BLOCK_N=bn, NUM_KV_HEADS=h, WRITE_LSE=return_lse,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if dim <= 64 else 8, num_stages=2,
    )  # fmt: skip
    if return_lse:
        return out, lse
    return out
