"""Calibration inputs: records from JSON Lines or Parquet, or from moa_plan's synthetic task generators."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from moa_plan import Record, read_records
from moa_plan._files import require_file
from moa_profiler.errors import CalibrationError

__all__ = ["load_records", "task_records", "tasks_available"]


def load_records(path: str | Path) -> list[Record]:
    """Records from a ``.jsonl``/``.json`` (moa_plan records) or ``.parquet`` file.

    Parquet files need a ``context`` column; ``question``, ``answer`` and ``task`` are optional.

    Raises:
        CalibrationError / RecordsError: for a missing, malformed or empty file.
    """
    p = require_file(path, "records", CalibrationError)
    if p.suffix.lower() != ".parquet":
        return read_records(p)
    import polars as pl

    try:
        frame = pl.read_parquet(p)
    except Exception as exc:  # polars raises several types for non-Parquet input
        raise CalibrationError(f"{p}: not a readable Parquet records file ({exc.__class__.__name__})") from None
    if "context" not in frame.columns:
        raise CalibrationError(f"{p}: Parquet records need a 'context' column, found {', '.join(frame.columns)}")
    if frame.height == 0:
        raise CalibrationError(f"{p}: records file holds no records")
    out = []
    for number, row in enumerate(frame.iter_rows(named=True), start=1):
        answer = row.get("answer")
        if row["context"] is None:
            raise CalibrationError(f"{p}: row {number} has no context")
        out.append(
            Record(
                task=str(row.get("task") or "records"),
                context=str(row["context"]),
                question=str(row.get("question") or ""),
                answer=None if answer is None else str(answer),
            )
        )
    return out


def tasks_available() -> bool:
    """Whether this moa-plan ships the synthetic task generators (``moa_plan.tasks``)."""
    try:
        importlib.import_module("moa_plan.tasks")
    except ImportError:
        return False
    return True


def task_records(
    task: str,
    lengths: Sequence[int],
    per_length: int,
    *,
    count_tokens: Callable[[str], int],
    overhead: int,
    seed: int = 0,
    options: Mapping[str, int] | None = None,
) -> list[Record]:
    """Records of synthetic tasks, ``per_length`` of each task for each target prompt length.

    ``task`` is one name of ``moa_plan.tasks`` or several, comma-separated (a mixed calibration
    set: each task adds ``per_length`` records per length). ``options`` go to every task's
    generator (e.g. ``{"lines": 1}`` for the recall tasks).

    Raises:
        CalibrationError: if moa_plan has no task generators.
    """
    try:
        tasks = importlib.import_module("moa_plan.tasks")
    except ImportError:
        raise CalibrationError(
            "this moa-plan has no synthetic tasks (moa_plan.tasks); pass --records instead"
        ) from None
    names = [t.strip() for t in task.split(",") if t.strip()]
    if not names:
        raise CalibrationError("no task named")
    out: list[Record] = []
    for index, length in enumerate(lengths):
        for name in names:
            out.extend(
                tasks.generate(
                    name,
                    per_length,
                    target_length=length,
                    count_tokens=count_tokens,
                    seed=seed + index,
                    overhead=overhead,
                    **dict(options or {}),
                )
            )
    return out
