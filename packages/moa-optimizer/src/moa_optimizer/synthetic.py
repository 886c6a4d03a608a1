"""Synthetic profiles with known structure, for tests and benchmarks.

Each query head has a distance profile: a local part ``exp(-d / tau)`` plus a long-range part
spread evenly over all distances, mixed by a per-head weight. "Local" heads put almost all
mass near the diagonal, "long-range" heads put much of it far away, so a good plan gives the
long-range heads wide spans and the local ones narrow spans. The same head parameters are used
at every length, so profiles at several lengths describe one model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from moa_plan import DEFAULT_BLOCK, DEFAULT_SINK, ModelFingerprint, Profile

__all__ = ["synthetic_fingerprint", "synthetic_profiles"]


def synthetic_fingerprint(
    num_layers: int = 4, num_heads: int = 8, num_kv_heads: int | None = None, *, head_dim: int = 64
) -> ModelFingerprint:
    """A fingerprint for a synthetic Llama-like model."""
    return ModelFingerprint(
        architecture="SyntheticForCausalLM",
        num_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        head_dim=head_dim,
        max_position_embeddings=1 << 20,
    )


def synthetic_profiles(
    model: ModelFingerprint,
    lengths: Sequence[int],
    *,
    seed: int = 0,
    long_range_fraction: float = 0.3,
    bucket: int | None = None,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
) -> list[Profile]:
    """One synthetic profile per length.

    Args:
        model: Model fingerprint (sets L and HQ).
        lengths: Profiled lengths N (each > sink).
        seed: Seed of the head parameters.
        long_range_fraction: Share of query heads that are long-range.
        bucket: If set, distances are summed into buckets of this many tokens (with edges),
            which keeps big synthetic models small in memory; None gives exact histograms.
        sink: Sink tokens S.
        block: Block size B.

    Returns:
        Profiles with ``hist`` float32 ``[L, HQ, K]`` and ``sink_influence`` ``[L, HQ]``.
    """
    rng = np.random.default_rng(seed)
    shape = (model.num_layers, model.num_attention_heads)
    long_range = rng.random(shape) < long_range_fraction
    tau = np.exp(rng.normal(np.log(48.0), 0.6, shape))
    far_weight = np.where(long_range, rng.uniform(0.3, 0.8, shape), rng.uniform(0.0, 0.01, shape))
    scale = np.exp(rng.normal(0.0, 0.5, shape))
    out = []
    for n in lengths:
        if n <= sink:
            raise ValueError(f"profiled length {n} must exceed the sink {sink}")
        hist = _head_hist(n - sink, tau, far_weight, scale)
        edges = None
        if bucket is not None and bucket > 1:
            edges = np.unique(np.append(np.arange(0, n - sink, bucket), n - sink)).astype(np.int64)
            hist = np.add.reduceat(hist, edges[:-1], axis=-1)
        out.append(
            Profile(
                model=model,
                length=int(n),
                sink=sink,
                block=block,
                num_samples=1,
                hist=hist.astype(np.float32),
                sink_influence=(0.1 * scale).astype(np.float32),
                edges=edges,
                notes=f"synthetic seed={seed}",
            )
        )
    return out


def _head_hist(
    k: int, tau: npt.NDArray[np.float64], far: npt.NDArray[np.float64], scale: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``[L, HQ, k]`` influence by distance; a distance d occurs for ``k - d`` query positions."""
    d = np.arange(k, dtype=np.float64)
    occurrences = (k - d) / k
    local = np.exp(-d / tau[..., None]) / tau[..., None]
    spread = np.full(k, 1.0 / k)
    mix = (1.0 - far[..., None]) * local + far[..., None] * spread
    return (scale[..., None] * mix * occurrences).astype(np.float64)
