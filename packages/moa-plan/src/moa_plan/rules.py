"""Elastic rules and the span / window / density functions (DESIGN.md section 3).

This module is the only place where the span formula is written. Every function accepts
scalars or numpy arrays and broadcasts, so the optimizer can evaluate a whole grid of rules
at many lengths in one call.

    span(N)   = min(N, max(S + B, roundup_B(alpha + beta * N)))   tokens, sink included
    window(N) = span(N) - S   (never below 0)
    mask:       query i sees key j  iff  j <= i and (j < S or i - j < window)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_SINK",
    "ElasticRule",
    "attention_density",
    "kv_density",
    "mask_area",
    "span",
    "window",
]

DEFAULT_SINK = 64
DEFAULT_BLOCK = 64

# Guards roundup against float noise such as 0.1 * 640 = 64.00000000000001.
_ROUND_EPS = 1e-9

ArrayLike = npt.ArrayLike
IntArray = npt.NDArray[np.int64]


class ElasticRule(BaseModel):
    """A head's elastic rule: ``span(N) = alpha + beta * N`` before rounding and clipping.

    Attributes:
        alpha: Offset in tokens (may be negative: the span then grows faster than it starts).
        beta: Growth per token of total length, in [0, 1].
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float
    beta: float

    @field_validator("alpha")
    @classmethod
    def _alpha_finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"alpha must be a finite number, got {value}")
        return value

    @field_validator("beta")
    @classmethod
    def _beta_range(cls, value: float) -> float:
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1], got {value}")
        return value

    def span(self, n: ArrayLike, sink: int = DEFAULT_SINK, block: int = DEFAULT_BLOCK) -> IntArray:
        """Span in tokens (sink included) at total length ``n``; see `span`."""
        return span(self.alpha, self.beta, n, sink=sink, block=block)

    def window(self, n: ArrayLike, sink: int = DEFAULT_SINK, block: int = DEFAULT_BLOCK) -> IntArray:
        """Window (span minus sink) at total length ``n``; see `window`."""
        return window(self.alpha, self.beta, n, sink=sink, block=block)


def span(
    alpha: ArrayLike,
    beta: ArrayLike,
    n: ArrayLike,
    *,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
) -> IntArray:
    """Span of rule(s) ``(alpha, beta)`` at total length(s) ``n``, sink included.

    ``min(N, max(S + B, roundup_B(alpha + beta * N)))``. All arguments broadcast.

    Args:
        alpha: Rule offsets in tokens.
        beta: Rule slopes in [0, 1].
        n: Total sequence lengths in tokens (>= 0).
        sink: Sink tokens S.
        block: Block size B (>= 1).

    Returns:
        int64 array of spans, broadcast shape of the inputs (0-d for scalars).
    """
    if block < 1 or sink < 0:
        raise ValueError(f"block must be >= 1 and sink >= 0, got block={block}, sink={sink}")
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    length = np.asarray(n, dtype=np.int64)
    raw = a + b * length
    rounded = np.ceil(raw / block - _ROUND_EPS) * block
    lower = np.maximum(rounded, sink + block)
    return np.minimum(length, lower).astype(np.int64)


def window(
    alpha: ArrayLike,
    beta: ArrayLike,
    n: ArrayLike,
    *,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
) -> IntArray:
    """Window of rule(s) at length(s) ``n``: ``span - S``, never below 0."""
    return np.maximum(span(alpha, beta, n, sink=sink, block=block) - sink, 0)


def kv_density(
    alpha: ArrayLike,
    beta: ArrayLike,
    n: ArrayLike,
    *,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
) -> npt.NDArray[np.float64]:
    """KV density ``span(N) / N`` of rule(s) at length(s) ``n`` (``n`` must be >= 1)."""
    length = np.asarray(n, dtype=np.float64)
    return span(alpha, beta, n, sink=sink, block=block) / length


def mask_area(n: ArrayLike, win: ArrayLike, *, sink: int = DEFAULT_SINK) -> IntArray:
    """Number of (query, key) pairs the sink + window mask keeps over ``n`` tokens.

    Query i sees ``min(W, i + 1)`` band keys plus ``min(S, max(0, i - W + 1))`` sink keys left
    of the band; summing over i gives a closed form, so this is O(1) per entry.

    Args:
        n: Sequence lengths.
        win: Windows W (>= 0).
        sink: Sink tokens S.
    """
    length = np.asarray(n, dtype=np.int64)
    w = np.minimum(np.maximum(np.asarray(win, dtype=np.int64), 0), length)
    band = w * (w + 1) // 2 + (length - w) * w
    m = length - w
    s = np.int64(sink)
    sink_part = np.where(m <= s, m * (m + 1) // 2, s * (s + 1) // 2 + s * (m - s))
    return (band + sink_part).astype(np.int64)


def attention_density(
    alpha: ArrayLike,
    beta: ArrayLike,
    n: ArrayLike,
    *,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
) -> npt.NDArray[np.float64]:
    """Attention-area density: mask area over the causal triangle ``N (N + 1) / 2``."""
    length = np.asarray(n, dtype=np.int64)
    win = window(alpha, beta, n, sink=sink, block=block)
    return mask_area(length, win, sink=sink) / (length * (length + 1) / 2)
