"""Evaluation reports: tables (Markdown + Parquet) and heatmaps (PNG)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moa.bench.report import markdown_table, write_parquet
from moa.evaluate import effective_context_table
from moa_plan import atomic_write, atomic_write_text

__all__ = ["accuracy_by_length", "retrieval_heatmaps", "retrieval_outputs"]


def accuracy_by_length(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (plan, task, length): accuracy and mean score over deciles, KV density and mean span."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["plan"], r["task"], r["length"]), []).append(r)
    out = []
    for (plan, task, length), group in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        correct, total = sum(g["correct"] for g in group), sum(g["total"] for g in group)
        scored = sum(g.get("score", g["accuracy"]) * g["total"] for g in group)
        out.append(
            {
                "task": task,
                "length": length,
                "plan": plan,
                "accuracy": correct / max(1, total),
                "score": scored / max(1, total),
                "samples": total,
                "kv_density": group[0]["kv_density"],
                "mean_span": group[0]["mean_span"],
            }
        )
    return out


def retrieval_heatmaps(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """A depth x length accuracy heatmap per (plan, task), drawn like the original NIAH plot.

    Rows are the depth of the asked item (0% at the top), columns the length; green = found.
    Each cell is annotated with its accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    for plan in sorted({r["plan"] for r in rows}):
        for task in sorted({r["task"] for r in rows}):
            cell = [r for r in rows if r["plan"] == plan and r["task"] == task]
            if not cell:
                continue
            lengths = sorted({r["length"] for r in cell})
            deciles = sorted({r["decile"] for r in cell})
            depth = {r["decile"]: r.get("depth_percent", 10 * r["decile"] + 5) for r in cell}
            grid = np.full((len(deciles), len(lengths)), np.nan)
            for r in cell:
                grid[deciles.index(r["decile"]), lengths.index(r["length"])] = r["accuracy"]
            fig, ax = plt.subplots(figsize=(0.9 * len(lengths) + 2.5, 0.35 * len(deciles) + 1.5))
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
            ax.set_yticks(range(len(deciles)), [f"{depth[d]:.0f}%" for d in deciles])
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xlabel("length (tokens)")
            ax.set_ylabel("depth of the asked item")
            ax.set_title(f"{task} retrieval: {plan}")
            fig.colorbar(im, ax=ax, label="accuracy")
            path = out_dir / f"retrieval-{task}-{plan}.png"
            atomic_write(path, functools.partial(_save_png, fig))
            plt.close(fig)
            paths.append(path)
    return paths


def _save_png(fig: Any, tmp: Path) -> None:
    fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")


def retrieval_outputs(rows: Sequence[dict[str, Any]], out_dir: Path) -> str:
    """Write ``retrieval.parquet`` (by decile), ``retrieval.md`` and heatmaps; return the by-length table.

    ``retrieval.md`` holds accuracy by (task, length, plan), then the effective context length of
    each plan per task and over all tasks, with the mean span at that length.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out_dir / "retrieval.parquet")
    summary = accuracy_by_length(rows)
    columns = ["task", "length", "plan", "accuracy", "samples", "kv_density", "mean_span"]
    if any(r.get("score", r["accuracy"]) != r["accuracy"] for r in rows):
        # A partial-credit task (niah-multi keyword recall) is in the table.
        columns.insert(4, "score")
    table = markdown_table(summary, columns)
    effective = markdown_table(
        effective_context_table(rows), ["plan", "task", "effective_length", "mean_span", "kv_density"]
    )
    atomic_write_text(
        out_dir / "retrieval.md",
        table + "\nEffective context length (largest length with >= 90% accuracy; - if none), "
        "with the mean span at that length:\n\n" + effective,
    )
    retrieval_heatmaps(rows, out_dir)
    return table
