"""Exact-match scorers of the synthetic tasks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from moa_plan.records import Record
from moa_plan.tasks.generators import TaskError

__all__ = ["accuracy", "normalize", "score"]


def normalize(text: str) -> str:
    """Collapse whitespace (the word tokenizer decodes with single spaces)."""
    return " ".join(text.split())


def score(record: Record, prediction: str) -> float:
    """1.0 if the prediction equals the record's answer (whitespace-normalised), else 0.0.

    Extra text after the answer (e.g. an end-of-turn token decoded as text) is not forgiven:
    strip it before scoring.

    Raises:
        TaskError: if the record has no reference answer.
    """
    if record.answer is None:
        raise TaskError(f"record of task {record.task!r} has no reference answer to score against")
    return 1.0 if normalize(prediction) == normalize(record.answer) else 0.0


def accuracy(records: Sequence[Record], predictions: Iterable[str]) -> float:
    """Mean `score` over paired records and predictions.

    Raises:
        TaskError: if the counts differ or there are no records.
    """
    preds = list(predictions)
    if len(preds) != len(records) or not records:
        raise TaskError(f"need one prediction per record, got {len(preds)} for {len(records)} records")
    return sum(score(r, p) for r, p in zip(records, preds, strict=True)) / len(records)
