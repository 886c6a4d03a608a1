"""The rule grid: candidate elastic rules ``(alpha, beta)`` for the optimizer.

The default follows the original MoA (alphas from ``-min length`` to the longest profiled
length in steps, betas 0..1 in eighths) scaled to the lengths at hand, plus the cheapest rule
(``alpha = S + B``, ``beta = 0``: the sink and one block at every length), then filtered so every
rule is valid at every constrained length (``alpha + beta * N > 0`` everywhere and
``<= N`` from the longest profiled length on; shorter lengths may clip to N), deduplicated (two
rules with the same span at every constrained length are one rule for the optimizer) and
sorted by span at the longest constrained length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from moa_optimizer.errors import OptimizerError
from moa_plan import DEFAULT_BLOCK, DEFAULT_SINK, span

__all__ = ["RULE_TABLE_SCHEMA", "RuleGrid", "default_alphas", "default_betas", "format_rule_table", "make_grid"]

RULE_TABLE_SCHEMA = {"rule": pl.Int32, "alpha": pl.Float64, "beta": pl.Float64}


@dataclass(frozen=True, kw_only=True)
class RuleGrid:
    """Candidate rules, index ``r`` = position in the arrays.

    Attributes:
        alphas: ``[R]`` float64 offsets in tokens.
        betas: ``[R]`` float64 slopes in [0, 1].
        sink: Sink tokens S the spans assume.
        block: Block size B the spans assume.
    """

    alphas: npt.NDArray[np.float64]
    betas: npt.NDArray[np.float64]
    sink: int = DEFAULT_SINK
    block: int = DEFAULT_BLOCK

    def __len__(self) -> int:
        return int(self.alphas.shape[0])

    def spans(self, lengths: Sequence[int]) -> npt.NDArray[np.int64]:
        """``[C, R]`` int64 spans (sink included) of every rule at every length."""
        n = np.asarray(lengths, dtype=np.int64)[:, None]
        return span(self.alphas[None, :], self.betas[None, :], n, sink=self.sink, block=self.block)

    def windows(self, lengths: Sequence[int]) -> npt.NDArray[np.int64]:
        """``[C, R]`` int64 windows (span minus sink)."""
        return np.maximum(self.spans(lengths) - self.sink, 0)

    def table(self, lengths: Sequence[int] = ()) -> pl.DataFrame:
        """One row per rule: rule, alpha, beta, and ``span_<N>`` per length (Int64)."""
        df = pl.DataFrame(
            {"rule": np.arange(len(self), dtype=np.int32), "alpha": self.alphas, "beta": self.betas},
            schema=RULE_TABLE_SCHEMA,
        )
        if lengths:
            spans = self.spans(lengths)
            df = df.with_columns([pl.Series(f"span_{n}", spans[i], dtype=pl.Int64) for i, n in enumerate(lengths)])
        return df


def default_alphas(
    constrained: Sequence[int], profiled: Sequence[int], *, block: int = DEFAULT_BLOCK, resolution: int = 1
) -> list[float]:
    """``-min(constrained)`` .. ``max(profiled)`` in steps of about ``max(profiled) / (8 x resolution)``.

    Steps are block-rounded. With profiled 2k/4k/8k and 16k constrained this is the original's
    -2048, -1024, ..., 8192.
    """
    lo, hi = min(constrained), max(profiled)
    step = max(block, int(np.ceil(hi / (8 * resolution) / block)) * block)
    count = (hi + lo) // step + 1
    return [float(a) for a in np.linspace(-lo, hi, count)]


def default_betas(resolution: int = 1) -> list[float]:
    """0, 1/8, ..., 1 (in steps of ``1 / (8 x resolution)``)."""
    steps = 8 * resolution
    return [i / steps for i in range(steps + 1)]


def make_grid(
    constrained: Sequence[int],
    profiled: Sequence[int],
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    sink: int = DEFAULT_SINK,
    block: int = DEFAULT_BLOCK,
    resolution: int = 1,
) -> RuleGrid:
    """All valid, distinct ``(alpha, beta)`` pairs of the Cartesian grid.

    Args:
        constrained: Every length the budget applies at (profiled ones included).
        profiled: Profiled lengths (they set the default alpha range).
        alphas: Alpha values; default `default_alphas`.
        betas: Beta values in [0, 1]; default `default_betas`.
        sink: Sink tokens S.
        block: Block size B.
        resolution: Divide the default alpha step and beta step by this (a finer grid: about
            ``resolution**2`` times the rules; for small models and short lengths).

    Returns:
        The grid, sorted by span at the longest constrained length (stable).

    Raises:
        OptimizerError: if no rule survives, a beta is outside [0, 1] or the resolution is not positive.
    """
    if resolution < 1:
        raise OptimizerError(f"the grid resolution must be a positive integer, got {resolution}")
    a_values = np.asarray(
        alphas if alphas is not None else default_alphas(constrained, profiled, block=block, resolution=resolution)
    )
    b_values = np.asarray(betas if betas is not None else default_betas(resolution), dtype=np.float64)
    if b_values.size == 0 or a_values.size == 0 or ((b_values < 0) | (b_values > 1)).any():
        raise OptimizerError("the rule grid needs at least one alpha and betas within [0, 1]")
    a, b = (x.ravel().astype(np.float64) for x in np.meshgrid(a_values, b_values, indexing="ij"))
    if alphas is None and betas is None:
        # The original's cheapest rule costs about 1/8 of a head at the longest profiled length;
        # add the cheapest possible one (the sink and one block at every length), so a budget can
        # cut a purely local head to the bone instead of spending it there.
        a, b = np.append(a, float(sink + block)), np.append(b, 0.0)
    n = np.asarray(sorted(set(constrained)), dtype=np.float64)[:, None]
    raw = a[None, :] + b[None, :] * n
    # Positive at every length; not wider than N from the longest profiled length on (shorter
    # lengths may clip to N: the rule is then dense there, as in the original).
    longer = n[:, 0] >= max(profiled)
    valid = (raw > 0).all(axis=0) & (raw[longer] <= n[longer]).all(axis=0)
    a, b = a[valid], b[valid]
    if a.size == 0:
        raise OptimizerError(
            f"no (alpha, beta) rule of the grid is valid (alpha + beta*N > 0, and <= N from the longest profiled "
            f"length on) at every length {sorted(set(constrained))}"
        )
    lengths = sorted(set(constrained))
    spans = span(a[None, :], b[None, :], np.asarray(lengths)[:, None], sink=sink, block=block)
    order = np.argsort(spans[-1], kind="stable")
    a, b, spans = a[order], b[order], spans[:, order]
    _, first = np.unique(spans.T, axis=0, return_index=True)
    keep = np.sort(first)
    return RuleGrid(alphas=a[keep], betas=b[keep], sink=sink, block=block)


def format_rule_table(grid: RuleGrid, lengths: Sequence[int]) -> str:
    """Plain-text table of the rules and their spans at ``lengths``, for people."""
    spans = grid.spans(lengths)
    head = f"{'rule':>4}  {'alpha':>8}  {'beta':>6}  " + "  ".join(f"{'span@' + str(n):>11}" for n in lengths)
    rows = [head]
    for r in range(len(grid)):
        cells = "  ".join(f"{int(spans[i, r]):>11}" for i in range(len(lengths)))
        rows.append(f"{r:>4}  {grid.alphas[r]:>8g}  {grid.betas[r]:>6g}  {cells}")
    return "\n".join(rows)
