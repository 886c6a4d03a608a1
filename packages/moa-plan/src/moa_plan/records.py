"""The dataset record format shared by task generators, calibration and evaluation.

A record is ``(context, question, answer, metadata)`` plus the task name. Files are JSON Lines,
one record per line; Parquet readers live with the packages that depend on polars.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moa_plan._files import require_file
from moa_plan.errors import RecordsError
from moa_plan.io import atomic_write_text

__all__ = ["Record", "read_records", "write_records"]

Scalar = str | int | float | bool | None


class Record(BaseModel):
    """One sample of a long-context task.

    Attributes:
        task: Task family, e.g. ``lines``, ``passkey``, ``summary``.
        context: The long text.
        question: What is asked about it (may be empty for summaries).
        answer: Reference answer, or None when the model will write it (calibration).
        metadata: Seed, depth, target length and other task facts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(min_length=1)
    context: str
    question: str = ""
    answer: str | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict)


def read_records(path: str | Path) -> list[Record]:
    """Read a JSON Lines records file.

    Raises:
        RecordsError: naming the file and line of the first bad record, or if it has none.
    """
    p = require_file(path, "records", RecordsError)
    records = []
    try:
        with p.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(Record.model_validate(json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise RecordsError(f"{p}: line {number} is not valid JSON ({exc.msg})") from None
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(x) for x in err["loc"]) or "(record)"
                    raise RecordsError(f"{p}: line {number}: field {loc}: {err['msg']}") from None
    except UnicodeDecodeError:
        raise RecordsError(f"{p}: records file is not UTF-8 text") from None
    if not records:
        raise RecordsError(f"{p}: records file holds no records")
    return records


def write_records(path: str | Path, records: Iterable[Record]) -> Path:
    """Write records as JSON Lines atomically."""
    text = "".join(r.model_dump_json() + "\n" for r in records)
    return atomic_write_text(path, text)
