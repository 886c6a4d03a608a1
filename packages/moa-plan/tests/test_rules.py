"""Property tests of the rule math against brute force (the mask counted token by token)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_plan import ModelFingerprint, Plan, attention_density, mask_area, span, window

sinks = st.sampled_from([0, 4, 16, 64])
blocks = st.sampled_from([1, 8, 64, 128])
betas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
alphas = st.floats(min_value=-8192, max_value=8192, allow_nan=False)
lengths = st.integers(min_value=1, max_value=200_000)


@given(alpha=alphas, beta=betas, n1=lengths, n2=lengths, sink=sinks, block=blocks)
def test_span_monotone_in_length(alpha: float, beta: float, n1: int, n2: int, sink: int, block: int) -> None:
    lo, hi = sorted((n1, n2))
    assert span(alpha, beta, lo, sink=sink, block=block) <= span(alpha, beta, hi, sink=sink, block=block)


@given(alpha=alphas, beta=betas, n=lengths, sink=sinks, block=blocks)
def test_span_bounds_and_rounding(alpha: float, beta: float, n: int, sink: int, block: int) -> None:
    s = int(span(alpha, beta, n, sink=sink, block=block))
    assert min(n, sink + block) <= s <= n
    if s != n:
        assert s % block == 0 or s == sink + block
        assert s >= alpha + beta * n - 1e-6


@given(alpha=alphas, beta=betas, n=st.integers(min_value=1, max_value=5000), sink=sinks, block=blocks)
def test_span_matches_definition(alpha: float, beta: float, n: int, sink: int, block: int) -> None:
    raw = alpha + beta * n
    # Smallest multiple of block that is >= raw, computed by counting instead of ceil.
    rounded = int(np.floor(raw / block)) * block
    while rounded < raw - 1e-9:
        rounded += block
    while rounded - block >= raw - 1e-9:
        rounded -= block
    assert span(alpha, beta, n, sink=sink, block=block) == min(n, max(sink + block, rounded))


def _brute_area(n: int, win: int, sink: int) -> int:
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return int(((j <= i) & ((j < sink) | (i - j < win))).sum())


@settings(max_examples=60)
@given(n=st.integers(min_value=1, max_value=300), win=st.integers(min_value=0, max_value=320), sink=sinks)
def test_mask_area_equals_brute_force(n: int, win: int, sink: int) -> None:
    assert mask_area(n, win, sink=sink) == _brute_area(n, win, sink)


def test_attention_density_dense_is_one() -> None:
    assert attention_density(0, 1.0, [100, 4096], sink=64, block=64).tolist() == [1.0, 1.0]


def test_window_never_negative() -> None:
    assert window(0, 0.0, 10, sink=64, block=64) == 0
    assert window(0, 0.5, 4096, sink=64, block=64) == 2048 - 64


def test_vectorised_broadcast() -> None:
    a = np.array([0.0, 512.0])[:, None]
    b = np.array([0.25, 0.5, 1.0])[None, :]
    out = span(a, b, 4096)
    assert out.shape == (2, 3)
    assert out.tolist() == [[1024, 2048, 4096], [1536, 2560, 4096]]


fingerprints = st.builds(
    lambda layers, kv, group: ModelFingerprint(
        num_layers=layers, num_attention_heads=kv * group, num_key_value_heads=kv, head_dim=16
    ),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 4),
)


@given(fp=fingerprints, n=lengths, sink=sinks, block=blocks)
def test_dense_plan_density_is_one(fp: ModelFingerprint, n: int, sink: int, block: int) -> None:
    assert Plan.dense(fp, sink=sink, block=block).density(n) == 1.0


@given(fp=fingerprints, n=lengths, fraction=st.floats(min_value=0.01, max_value=1.0), block=blocks, sink=sinks)
def test_uniform_density_within_one_block(fp: ModelFingerprint, n: int, fraction: float, block: int, sink: int) -> None:
    plan = Plan.uniform(fp, fraction, sink=sink, block=block)
    if fraction * n >= sink + block:
        assert abs(plan.density(n) - fraction) <= block / n + 1e-12
