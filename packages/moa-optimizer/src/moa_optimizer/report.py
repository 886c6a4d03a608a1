"""Outputs of an optimization run: plan files, summary table (Parquet), Pareto and heatmap PNGs.

This is the only module of the package that writes files; every write is atomic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from moa_plan import Plan, atomic_write, span

__all__ = [
    "budget_room",
    "format_room",
    "format_summary",
    "plot_heatmap",
    "plot_pareto",
    "summary_table",
    "write_outputs",
]


def _lengths(plans: Sequence[Plan]) -> tuple[list[int], list[int]]:
    prov = plans[0].provenance
    profiled = list(prov.profiled_lengths)
    constrained = list(prov.constrained_lengths) or profiled
    return profiled, constrained


def summary_table(plans: Sequence[Plan], files: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per plan: loss at each profiled length, density at each constrained length, gap, status."""
    profiled, constrained = _lengths(plans)
    rows = []
    for i, plan in enumerate(plans):
        prov = plan.provenance
        row: dict[str, object] = {"plan": i, "file": files[i] if files else None}
        for n in profiled:
            row[f"loss@{n}"] = prov.objectives.get(f"loss@{n}")
        for n in constrained:
            row[f"density@{n}"] = plan.density(n)
        row["max_rules_per_layer"] = max(plan.rules_per_layer())
        for key in ("objective_length", "gap", "status", "backend", "seconds"):
            row[key] = prov.extra.get(key)
        rows.append(row)
    schema: dict[str, pl.DataType | type[pl.DataType]] = {"plan": pl.Int32, "file": pl.String}
    schema.update({f"loss@{n}": pl.Float64 for n in profiled})
    schema.update({f"density@{n}": pl.Float64 for n in constrained})
    schema.update(
        {
            "max_rules_per_layer": pl.Int32,
            "objective_length": pl.Int64,
            "gap": pl.Float64,
            "status": pl.String,
            "backend": pl.String,
            "seconds": pl.Float64,
        }
    )
    return pl.DataFrame(rows, schema=schema)


def format_summary(df: pl.DataFrame) -> str:
    """The summary table as aligned text for people (numbers rounded, file names dropped)."""
    shown = df.drop("file")
    cols = shown.columns
    cells = [[_fmt(v) for v in row] for row in shown.iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def budget_room(plan: Plan, length: int, upper: float) -> int:
    """The most KV heads a plan under density ``upper`` can keep whole at ``length``.

    Every head holds at least its minimum span (the sink and one block, `moa_plan.span`), so ``k`` whole heads and
    the rest at the minimum fit iff ``k N + (H - k) m <= upper H N``: ``k <= (upper H N - H m) / (N - m)``.
    """
    heads = plan.num_layers * plan.model.num_key_value_heads
    least = _least_span(plan, length)
    if least >= length:
        return heads
    room = (upper * heads * length - heads * least) / (length - least)
    return int(min(heads, max(0, math.floor(room + 1e-9))))


def _least_span(plan: Plan, length: int) -> int:
    """Every head's minimum span at ``length``: the sink and one block (clipped to the length)."""
    return int(span(0.0, 0.0, length, sink=plan.sink, block=plan.block))


def format_room(plan: Plan) -> str:
    """Lines for people: at each constrained length, the minimum span's share of the budget and how many heads fit whole.

    At short lengths the minimum (sink + one block) takes much of a small budget and caps the heads that can read the
    whole context (SmolLM2 at 25% and 1024 tokens: 12 of 90; RESULTS.md); the plan's own count is beside it.
    Empty if the plan records no upper budget.
    """
    upper = plan.provenance.budgets.get("upper")
    if upper is None:
        return ""
    _, constrained = _lengths([plan])
    lines = []
    for n in constrained:
        least = _least_span(plan, n)
        spans = plan.spans(n)
        lines.append(
            f"at {n}: the minimum span ({least} tokens: sink + one block) is {least / n:.1%} of N, "
            f"{least / n / upper:.0%} of the {upper:g} budget; at most {budget_room(plan, n, upper)} of {spans.size} "
            f"KV heads fit whole (plan 0: {int((spans >= n).sum())} whole, {int((spans <= least).sum())} at the minimum)"
        )
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "" if v is None else str(v)


def plot_pareto(plans: Sequence[Plan], path: str | Path) -> Path:
    """Scatter of the plans' losses: first vs last profiled length, coloured by the middle one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiled, _ = _lengths(plans)
    losses = np.array([[p.provenance.objectives[f"loss@{n}"] for n in profiled] for p in plans])
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    x, y = losses[:, 0], losses[:, -1]
    colour = losses[:, len(profiled) // 2] if len(profiled) > 2 else None
    points = ax.scatter(x, y, c=colour, cmap="viridis") if colour is not None else ax.scatter(x, y)
    for i, (a, b) in enumerate(zip(x, y, strict=True)):
        ax.annotate(str(i), (a, b), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if colour is not None:
        fig.colorbar(points, ax=ax, label=f"loss @ N={profiled[len(profiled) // 2]}")
    ax.set_xlabel(f"loss @ N={profiled[0]}")
    ax.set_ylabel(f"loss @ N={profiled[-1]}")
    ax.set_title(f"Pareto front ({len(plans)} plans)")
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return written


def plot_heatmap(plan: Plan, path: str | Path, length: int | None = None) -> Path:
    """Layers x KV heads heatmap of each head's KV density at ``length`` (default: the longest constrained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = length or max(plan.provenance.constrained_lengths or [4096])
    dens = plan.spans(n) / n
    fig, ax = plt.subplots(figsize=(max(4, dens.shape[1] / 6 + 2), max(3, dens.shape[0] / 6 + 1)), dpi=100)
    im = ax.imshow(dens, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"KV density span/N at N={n}")
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_title(f"rules: mean density {plan.density(n):.3f} at N={n}")
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return written


def write_outputs(plans: Sequence[Plan], out_dir: str | Path, *, plots: bool = True) -> pl.DataFrame:
    """Write ``plan_XX.json`` per plan, ``summary.parquet``, ``pareto.png`` and ``heatmap_XX.png``.

    Returns:
        The summary table (with file names).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, plan in enumerate(plans):
        name = f"plan_{i:02d}.json"
        plan.save(out / name)
        files.append(name)
    table = summary_table(plans, files)
    atomic_write(out / "summary.parquet", lambda tmp: table.write_parquet(tmp))
    if plots:
        profiled, _ = _lengths(plans)
        if profiled and all(f"loss@{n}" in p.provenance.objectives for p in plans for n in profiled):
            plot_pareto(plans, out / "pareto.png")
        for i, plan in enumerate(plans):
            plot_heatmap(plan, out / f"heatmap_{i:02d}.png")
    return table
