"""Scorers: exact match for the toy tasks, the usual keyword / number rules for the English ones.

English tasks (`moa_plan.tasks.english`), scored on the generated text (in completion form: the
continuation after the prompt, which ends with the start of the answer):

- ``niah``: 1.0 iff the answer contains "sandwich" and "dolores park" (case-insensitive,
  whitespace-normalised). The original test graded with GPT-4 as a judge; this keyword rule is
  the one many reimplementations use.
- ``niah-multi``: the fraction of the ingredient keywords (figs, prosciutto, goat cheese) present;
  a record counts as correct only at full recall (1.0).
- ``passkey-en``, ``lines-en``: 1.0 iff the first number in the answer equals the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from moa_plan.records import Record
from moa_plan.tasks.english import ENGLISH_TASKS, NIAH_KEYWORDS, PIZZA_KEYWORDS
from moa_plan.tasks.generators import TaskError

__all__ = ["accuracy", "first_number", "keyword_recall", "normalize", "score"]

_NUMBER = re.compile(r"\d+")


def normalize(text: str) -> str:
    """Collapse whitespace (the word tokenizer decodes with single spaces)."""
    return " ".join(text.split())


def score(record: Record, prediction: str) -> float:
    """Score of a prediction in [0, 1]; 1.0 is correct.

    Toy tasks: 1.0 if the prediction equals the record's answer (whitespace-normalised), else
    0.0; extra text after the answer (e.g. an end-of-turn token decoded as text) is not
    forgiven: strip it before scoring. English tasks: the rules in the module docstring; extra
    text is allowed.

    Raises:
        TaskError: if the record has no reference answer.
    """
    if record.answer is None:
        raise TaskError(f"record of task {record.task!r} has no reference answer to score against")
    if record.task in ENGLISH_TASKS:
        return _score_english(record, prediction)
    return 1.0 if normalize(prediction) == normalize(record.answer) else 0.0


def first_number(text: str) -> int | None:
    """The first run of digits in ``text`` as an integer, or None."""
    match = _NUMBER.search(text)
    return int(match.group()) if match else None


def keyword_recall(prediction: str, keywords: Sequence[str]) -> float:
    """Fraction of ``keywords`` found in ``prediction`` (case-insensitive, whitespace-normalised)."""
    text = normalize(prediction).lower()
    return sum(normalize(k).lower() in text for k in keywords) / len(keywords)


def _score_english(record: Record, prediction: str) -> float:
    if record.task == "niah":
        return 1.0 if keyword_recall(prediction, NIAH_KEYWORDS) == 1.0 else 0.0
    if record.task == "niah-multi":
        stored = record.metadata.get("keywords")
        return keyword_recall(prediction, str(stored).split("|") if stored else PIZZA_KEYWORDS)
    if record.task in ("passkey-en", "lines-en"):
        got, want = first_number(prediction), first_number(record.answer or "")
        return 1.0 if got is not None and got == want else 0.0
    raise TaskError(f"task {record.task!r} has no scorer")


def accuracy(records: Sequence[Record], predictions: Iterable[str]) -> float:
    """Mean `score` over paired records and predictions.

    Raises:
        TaskError: if the counts differ or there are no records.
    """
    preds = list(predictions)
    if len(preds) != len(records) or not records:
        raise TaskError(f"need one prediction per record, got {len(preds)} for {len(records)} records")
    return sum(score(r, p) for r, p in zip(records, preds, strict=True)) / len(records)
