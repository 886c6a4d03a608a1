"""Attention influence of one layer, computed in query chunks from recorded q, k, v, o and dO.

For a head with softmax attention A (rows i = queries, columns j = keys) and G = dL/dA, masking
entry (i, j) and renormalising row i changes the loss to first order by

    E_ij = A_ij (r_i - G_ij) / (1 - A_ij),   r_i = sum_n G_in A_in.

Since o_i = sum_j A_ij v_j, the gradient is G = dO v^T (dL/dA_ij = dO_i . v_j), and r_i = dO_i . o_i.
So the N x N matrices are never needed at once: for a block of c query rows we recompute A and G
(``[HQ, c, N]`` each), form |E| and reduce it at once into the distance histogram, the sink share
and the optional block map. Peak extra memory is O(HQ x c x N) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "CUDA_CHUNK_ELEMENTS",
    "LayerInfluence",
    "chunk_rows",
    "influence_rows",
    "layer_influence",
]

# Default bound of one [HQ, rows, T] chunk tensor: small on CPU (memory first), larger on CUDA
# (fewer kernel launches per layer).
CPU_CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 25


@dataclass
class LayerInfluence:
    """Influence sums of one layer on one sequence (float64).

    Attributes:
        hist: ``[HQ, K]`` sum of |E| over keys j >= sink at distance d = i - j (K = T - sink).
        sink: ``[HQ]`` sum of |E| over keys j < sink.
        block_map: ``[HQ, nb, nb]`` sum of |E| per (query block, key block), or None.
    """

    hist: torch.Tensor
    sink: torch.Tensor
    block_map: torch.Tensor | None


def chunk_rows(length: int, heads: int, *, max_elements: int, align: int = 1) -> int:
    """Query rows per chunk so that one ``[heads, rows, length]`` tensor holds at most ``max_elements``.

    The result is a positive multiple of ``align`` (at least ``align``).
    """
    rows = max(1, max_elements // max(1, heads * length))
    return max(align, rows // align * align)


def influence_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    start: int,
    stop: int,
    scale: float,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Signed influence E for query rows ``[start, stop)`` of every head.

    Args:
        q: ``[HQ, T, D]`` queries; k, v: ``[H, T, D]`` keys and values (HQ % H == 0, query head
            hq uses KV head hq // (HQ // H)); do: ``[HQ, T, D]`` dL/do.
        start, stop: Query rows of the chunk.
        scale: Softmax scale.
        dtype: Compute dtype (float32, or float64 for tests).

    Returns:
        ``[HQ, stop - start, T]`` E in ``dtype``; 0 above the diagonal. An entry that is the only one
        its row sees (A = 1) gets 0: masking it leaves nothing to renormalise.
    """
    heads, length, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    rows = stop - start
    qc = q[:, start:stop].to(dtype).reshape(kv_heads, group * rows, dim)
    dc = do[:, start:stop].to(dtype).reshape(kv_heads, group * rows, dim)
    kt = k.to(dtype).transpose(1, 2)
    vt = v.to(dtype).transpose(1, 2)
    scores = torch.bmm(qc, kt).mul_(scale).view(heads, rows, length)
    i = torch.arange(start, stop, device=q.device)[:, None]
    j = torch.arange(length, device=q.device)[None, :]
    scores.masked_fill_(j > i, float("-inf"))
    a = torch.softmax(scores, dim=-1)
    del scores
    # G = dO v^T: dL/dA_ij = dO_i . v_j.
    g = torch.bmm(dc, vt).view(heads, rows, length)
    r = torch.einsum("hrn,hrn->hr", g, a)[..., None]
    # In place, to keep about three [HQ, rows, T] tensors alive: e = A (r - G) / (1 - A).
    e = g.neg_().add_(r).mul_(a)
    denom = torch.sub(1.0, a).clamp_min_(torch.finfo(dtype).eps)
    e.div_(denom)
    del denom
    return e.masked_fill_((a >= 1.0) | (j > i), 0.0)


def layer_influence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    *,
    sink: int,
    block: int | None = None,
    max_elements: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> LayerInfluence:
    """Reduce |E| of one layer into the distance histogram, sink share and block map.

    Args:
        q, k, v, do: As in `influence_rows` (T tokens).
        scale: Softmax scale.
        sink: Keys j < sink count toward the sink share, the rest toward ``hist[d = i - j]``.
        block: Block size of the block map, or None for no block map.
        max_elements: Bound on the elements of one ``[HQ, rows, T]`` chunk tensor (None: 2^22 on
            CPU, 2^25 on CUDA).
        dtype: Compute dtype of E.

    Returns:
        `LayerInfluence` with float64 sums on q's device.
    """
    heads, length, _ = q.shape
    sink = min(sink, length)
    buckets = max(length - sink, 1)
    device = q.device
    hist = torch.zeros(heads, buckets + 1, dtype=torch.float64, device=device)
    sink_sum = torch.zeros(heads, dtype=torch.float64, device=device)
    nb = -(-length // block) if block else 0
    block_map = torch.zeros(heads, nb, nb, dtype=torch.float64, device=device) if block else None
    if max_elements is None:
        max_elements = CUDA_CHUNK_ELEMENTS if q.is_cuda else CPU_CHUNK_ELEMENTS
    rows = chunk_rows(length, heads, max_elements=max_elements, align=block or 1)
    j = torch.arange(length, device=device)[None, :]
    for start in range(0, length, rows):
        stop = min(length, start + rows)
        e = influence_rows(q, k, v, do, start, stop, scale, dtype=dtype).abs_()
        i = torch.arange(start, stop, device=device)[:, None]
        d = i - j
        index = torch.where((j >= sink) & (d >= 0), d, buckets).reshape(1, -1)
        del d
        # Per-chunk sums in the compute dtype (at most `rows` terms per bucket), totals in float64.
        part = torch.zeros(heads, buckets + 1, dtype=e.dtype, device=device)
        part.scatter_add_(1, index.expand(heads, -1), e.reshape(heads, -1))
        hist += part
        del index, part
        if sink:
            sink_sum += e[:, :, :sink].sum(dim=(1, 2), dtype=torch.float64)
        if block_map is not None and block:
            padded = torch.zeros(heads, -(-(stop - start) // block) * block, nb * block, dtype=e.dtype, device=device)
            padded[:, : stop - start, :length] = e
            qb = padded.shape[1] // block
            sums = padded.view(heads, qb, block, nb, block).sum(dim=(2, 4)).to(torch.float64)
            block_map[:, start // block : start // block + qb] += sums
        del e
    return LayerInfluence(hist=hist[:, :buckets], sink=sink_sum, block_map=block_map)
