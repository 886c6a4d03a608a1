"""Loss and cost tables (polars, long form) and the dense `Problem` the solvers read.

- loss table: one row per (layer, KV head, rule, profiled length N): the loss of the rule's
  window at N, ``Profile.window_loss`` (influence at distances >= window, summed over the KV
  head's query heads; DESIGN.md section 3).
- cost table: one row per (layer, KV head, rule, constrained length N): the rule's span at N
  (``moa_plan.span``, sink included) and its KV density span / N. Constrained lengths include
  unseen, longer ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from moa_optimizer.errors import OptimizerError
from moa_optimizer.grid import RuleGrid
from moa_plan import ModelFingerprint, Profile

__all__ = ["COST_SCHEMA", "LOSS_SCHEMA", "Problem", "check_profiles", "cost_table", "loss_table"]

LOSS_SCHEMA = {"layer": pl.Int32, "kv_head": pl.Int32, "rule": pl.Int32, "length": pl.Int64, "loss": pl.Float64}
COST_SCHEMA = {
    "layer": pl.Int32,
    "kv_head": pl.Int32,
    "rule": pl.Int32,
    "length": pl.Int64,
    "span": pl.Int64,
    "density": pl.Float64,
}


def check_profiles(profiles: Sequence[Profile]) -> ModelFingerprint:
    """Check that profiles describe one model with one sink and distinct lengths; return its fingerprint.

    Raises:
        OptimizerError: naming the first mismatch.
    """
    if not profiles:
        raise OptimizerError("at least one profile is needed")
    first = profiles[0]
    seen = set()
    for p in profiles:
        diffs = first.model.differences(p.model)
        if diffs:
            raise OptimizerError(
                f"profiles are for different models (length {first.length} vs {p.length}): "
                + "; ".join(d.replace("plan has", "first has").replace("model has", "other has") for d in diffs)
            )
        if (p.sink, p.block) != (first.sink, first.block):
            raise OptimizerError(
                f"profiles disagree on sink/block: {first.sink}/{first.block} at N={first.length}, "
                f"{p.sink}/{p.block} at N={p.length}"
            )
        if p.length in seen:
            raise OptimizerError(f"two profiles have the same length {p.length}")
        seen.add(p.length)
    return first.model


def _long(arr: npt.NDArray[np.generic], lengths: Sequence[int]) -> dict[str, npt.NDArray[np.generic]]:
    """Index columns of a ``[P, L, H, R]`` array flattened in C order."""
    P, L, H, R = arr.shape
    idx = np.indices((P, L, H, R)).reshape(4, -1)
    return {
        "layer": idx[1].astype(np.int32),
        "kv_head": idx[2].astype(np.int32),
        "rule": idx[3].astype(np.int32),
        "length": np.asarray(lengths, dtype=np.int64)[idx[0]],
    }


def loss_table(profiles: Sequence[Profile], grid: RuleGrid) -> pl.DataFrame:
    """Long-form loss table (`LOSS_SCHEMA`) of every grid rule on every KV head at every profiled length."""
    check_profiles(profiles)
    losses = []
    for p in profiles:
        if (p.sink, p.block) != (grid.sink, grid.block):
            raise OptimizerError(
                f"profile at N={p.length} has sink/block {p.sink}/{p.block}, the grid {grid.sink}/{grid.block}"
            )
        win = grid.windows([p.length])[0]
        losses.append(p.window_loss(np.broadcast_to(win, (*p.kv_hist().shape[:2], len(grid)))))
    arr = np.stack(losses)
    cols = _long(arr, [p.length for p in profiles])
    return pl.DataFrame({**cols, "loss": arr.reshape(-1)}, schema=LOSS_SCHEMA)


def cost_table(model: ModelFingerprint, grid: RuleGrid, lengths: Sequence[int]) -> pl.DataFrame:
    """Long-form cost table (`COST_SCHEMA`): span and KV density of every rule on every KV head at ``lengths``."""
    spans = grid.spans(lengths)
    L, H = model.num_layers, model.num_key_value_heads
    arr = np.broadcast_to(spans[:, None, None, :], (len(lengths), L, H, len(grid)))
    cols = _long(arr, lengths)
    flat = arr.reshape(-1)
    return pl.DataFrame(
        {**cols, "span": flat, "density": flat / cols["length"].astype(np.float64)},
        schema=COST_SCHEMA,
    )


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Dense arrays of one optimization problem.

    Attributes:
        model: Fingerprint of the model.
        grid: The candidate rules (R of them).
        profiled: ``[P]`` profiled lengths (one objective each).
        constrained: ``[C]`` constrained lengths.
        loss: ``[P, L, H, R]`` float64 loss of rule r on KV head (l, h) at ``profiled[p]``.
        spans: ``[C, L, H, R]`` int64 spans (the same for every head, kept per head so a table
            with per-head costs works too).
    """

    model: ModelFingerprint
    grid: RuleGrid
    profiled: tuple[int, ...]
    constrained: tuple[int, ...]
    loss: npt.NDArray[np.float64]
    spans: npt.NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, H, R)``."""
        _, L, H, R = self.loss.shape
        return L, H, R

    @classmethod
    def from_tables(cls, model: ModelFingerprint, grid: RuleGrid, losses: pl.DataFrame, costs: pl.DataFrame) -> Problem:
        """Dense problem from the long loss and cost tables (every (layer, head, rule, length) once)."""
        L, H, R = model.num_layers, model.num_key_value_heads, len(grid)
        loss, profiled = _dense(losses, "loss", (L, H, R))
        spans, constrained = _dense(costs, "span", (L, H, R))
        return cls(
            model=model,
            grid=grid,
            profiled=profiled,
            constrained=constrained,
            loss=loss.astype(np.float64),
            spans=spans.astype(np.int64),
        )

    @classmethod
    def from_profiles(cls, profiles: Sequence[Profile], grid: RuleGrid, constrained: Sequence[int]) -> Problem:
        """Build the loss and cost tables and the dense problem from them."""
        model = check_profiles(profiles)
        return cls.from_tables(model, grid, loss_table(profiles, grid), cost_table(model, grid, constrained))


def _dense(
    df: pl.DataFrame, column: str, shape: tuple[int, int, int]
) -> tuple[npt.NDArray[np.generic], tuple[int, ...]]:
    lengths = tuple(int(n) for n in df["length"].unique(maintain_order=True).to_list())
    expected = len(lengths) * shape[0] * shape[1] * shape[2]
    if df.height != expected:
        raise OptimizerError(
            f"the {column} table has {df.height} rows, expected {expected} (one per layer, head, rule, length)"
        )
    order = {n: i for i, n in enumerate(lengths)}
    df = df.with_columns(pl.col("length").replace_strict(order, return_dtype=pl.Int64).alias("_p")).sort(
        ["_p", "layer", "kv_head", "rule"]
    )
    return df[column].to_numpy().reshape(len(lengths), *shape), lengths
