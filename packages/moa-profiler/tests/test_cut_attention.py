"""The span-mask attention of the ablation and gate statistics against an explicit float64 softmax per query, and
its gradient against finite differences.

`cut_attention` computes a short window block by block (each block of queries sees the sink, the block before it
and itself), so the oracle is the definition itself: query i sees key j iff j <= i and (j < sink or i - j < window).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from moa_profiler.attention import cut_attention, masking, profiling_attention


def brute_force(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, window: int, sink: int):
    """``[B, H, T, D]``: for every query, a softmax over exactly the keys the span mask keeps, one query at a time."""
    out = torch.zeros_like(query)
    length = query.shape[2]
    for i in range(length):
        keep = [j for j in range(i + 1) if j < sink or i - j < window]
        scores = query[:, :, i : i + 1] @ key[:, :, keep].transpose(-1, -2) * scale
        out[:, :, i] = (torch.softmax(scores, dim=-1) @ value[:, :, keep])[:, :, 0]
    return out


def qkv(length: int, heads: int = 3, dim: int = 8, seed: int = 0, grad: bool = False):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        (torch.randn(2, heads, length, dim, generator=generator, dtype=torch.float64) * 2).requires_grad_(grad)
        for _ in range(3)
    )


@pytest.mark.parametrize(
    ("length", "window", "sink"),
    [
        (96, 8, 4),  # blocks, the sink inside the first window
        (101, 8, 4),  # a last block padded
        (97, 16, 0),  # no sink
        (90, 4, 30),  # a sink longer than the window and than several blocks
        (64, 32, 16),  # a long window: one masked attention
        (40, 40, 8),  # the span covers every key: causal attention
        (1, 4, 2),
    ],
)
def test_cut_attention_equals_a_softmax_over_the_kept_keys(length, window, sink):
    q, k, v = qkv(length, seed=length + window)
    got = cut_attention(q, k, v, 0.3, window, sink)
    assert got.shape == q.shape
    torch.testing.assert_close(got, brute_force(q, k, v, 0.3, window, sink), rtol=1e-12, atol=1e-12)


def test_cut_attention_gradient_matches_finite_differences():
    q, k, v = qkv(37, heads=2, dim=3, seed=5, grad=True)  # blocks of 4, a padded last one, a 3-token sink
    assert torch.autograd.gradcheck(lambda a, b, c: cut_attention(a, b, c, 0.5, 4, 3), (q, k, v))


def test_masking_cuts_only_the_named_heads_query_groups():
    """Through the attention function: GQA 6 query / 3 KV heads, KV heads 0 and 2 cut (different spans), 1 causal;
    KV head 2 cut twice (windows 10 and 20) keeps only what both cuts keep."""
    q, _, _ = qkv(80, heads=6, seed=1)
    _, k, v = qkv(80, heads=3, seed=2)
    module = SimpleNamespace(layer_idx=1)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    with masking(1, 0, 6, 2), masking(1, 2, 10, 4), masking(0, 1, 3, 1):  # the last one is another layer's
        got, _ = profiling_attention(module, q, k, v, None, scaling=0.3)
    want = torch.cat(
        [
            brute_force(q[:, 0:2], kk[:, 0:2], vv[:, 0:2], 0.3, 6, 2),
            brute_force(q[:, 2:4], kk[:, 2:4], vv[:, 2:4], 0.3, 80, 0),
            brute_force(q[:, 4:6], kk[:, 4:6], vv[:, 4:6], 0.3, 10, 4),
        ],
        dim=1,
    )
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-12, atol=1e-12)
    with masking(1, 2, 10, 4), masking(1, 2, 20, 4):
        twice, _ = profiling_attention(module, q, k, v, None, scaling=0.3)
    # Both cuts together keep j < 4 or i - j < 10: the tighter window.
    torch.testing.assert_close(
        twice[:, :, 4:6],
        brute_force(q[:, 4:6], kk[:, 4:6], vv[:, 4:6], 0.3, 10, 4).transpose(1, 2),
        rtol=1e-12,
        atol=1e-12,
    )
