"""Evaluation reports: tables (Markdown + Parquet) and heatmaps (PNG)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moa.bench.report import markdown_table, write_parquet
from moa_plan import atomic_write, atomic_write_text

__all__ = ["accuracy_by_length", "retrieval_heatmaps", "retrieval_outputs"]


def accuracy_by_length(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (plan, task, length): accuracy over deciles, KV density and mean span."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["plan"], r["task"], r["length"]), []).append(r)
    out = []
    for (plan, task, length), group in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        correct, total = sum(g["correct"] for g in group), sum(g["total"] for g in group)
        out.append(
            {
                "task": task,
                "length": length,
                "plan": plan,
                "accuracy": correct / max(1, total),
                "samples": total,
                "kv_density": group[0]["kv_density"],
                "mean_span": group[0]["mean_span"],
            }
        )
    return out


def retrieval_heatmaps(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """A length x depth-decile accuracy heatmap per (plan, task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    for plan in sorted({r["plan"] for r in rows}):
        for task in sorted({r["task"] for r in rows}):
            cell = [r for r in rows if r["plan"] == plan and r["task"] == task]
            lengths = sorted({r["length"] for r in cell})
            grid = np.full((len(lengths), 10), np.nan)
            for r in cell:
                grid[lengths.index(r["length"]), r["decile"]] = r["accuracy"]
            fig, ax = plt.subplots(figsize=(6, 0.5 * len(lengths) + 1.5))
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
            ax.set_xticks(range(10), [str(d) for d in range(10)])
            ax.set_xlabel("depth decile of the asked item")
            ax.set_ylabel("length (tokens)")
            ax.set_title(f"{task} retrieval: {plan}")
            fig.colorbar(im, ax=ax)
            path = out_dir / f"retrieval-{task}-{plan}.png"
            atomic_write(path, functools.partial(_save_png, fig))
            plt.close(fig)
            paths.append(path)
    return paths


def _save_png(fig: Any, tmp: Path) -> None:
    fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")


def retrieval_outputs(rows: Sequence[dict[str, Any]], out_dir: Path) -> str:
    """Write ``retrieval.parquet`` (by decile), ``retrieval.md`` (by length) and heatmaps; return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out_dir / "retrieval.parquet")
    summary = accuracy_by_length(rows)
    table = markdown_table(summary, ["task", "length", "plan", "accuracy", "samples", "kv_density", "mean_span"])
    atomic_write_text(out_dir / "retrieval.md", table)
    retrieval_heatmaps(rows, out_dir)
    return table
