"""Benchmark output: a Markdown table for people, Parquet for machines, one JSON line last."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moa_plan import atomic_write, atomic_write_text

__all__ = ["markdown_table", "write_parquet", "write_results"]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write rows as Parquet atomically (polars)."""
    import polars as pl

    frame = pl.DataFrame(list(rows))
    return atomic_write(path, lambda tmp: frame.write_parquet(tmp))


def write_results(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    out_dir: Path,
    name: str,
    env: dict[str, Any],
    command: str,
    *,
    footer: str = "",
) -> str:
    """Write ``name.md`` (command, environment, table, ``footer``), ``name.parquet`` (the rows' scalar
    fields) and ``name.json`` (everything) under ``out_dir``.

    Returns:
        The Markdown text.
    """
    table = markdown_table(rows, columns)
    header = (
        f"Command: `{command}`\n\n"
        f"Date {env['date']}, git {env['git_sha']}, {env['cpu']} ({env['cores']} cores, {env['memory_gib']} GiB), "
        f"device {env['device']}, python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        + "\n\n"
    )
    text = header + table + footer
    atomic_write_text(out_dir / f"{name}.md", text)
    scalar = (str, int, float, bool, type(None))
    write_parquet([{k: v for k, v in r.items() if isinstance(v, scalar)} for r in rows], out_dir / f"{name}.parquet")
    atomic_write_text(out_dir / f"{name}.json", json.dumps({"env": env, "rows": list(rows)}, default=str) + "\n")
    return text
