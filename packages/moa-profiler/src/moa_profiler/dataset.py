"""The calibration-set file: Parquet (one row per sample) with provenance in the file metadata.

Columns: ``sample_id`` (str), ``bucket`` (int64, the sample's exact length N), ``input_ids``
(list of int32, N ids), ``answer_start`` / ``answer_end`` (int64, the answer tokens are
``input_ids[answer_start:answer_end]``), ``source``, ``task`` (str), ``record_index``,
``context_tokens`` (context tokens before fitting), ``cut_tokens`` (context tokens removed from
the middle). Provenance is a JSON object under the schema metadata key ``moa-calibration``:
format, format_version, fingerprint, model, source, versions, created_at, generation settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_plan import ModelFingerprint, atomic_write
from moa_plan._files import require_file
from moa_profiler.errors import CalibrationError

__all__ = ["CALIBRATION_FORMAT_VERSION", "CalibrationSample", "CalibrationSet", "read_calibration", "write_calibration"]

CALIBRATION_FORMAT_VERSION = 1
_META_KEY = b"moa-calibration"
_COLUMNS = (
    "sample_id",
    "bucket",
    "input_ids",
    "answer_start",
    "answer_end",
    "source",
    "task",
    "record_index",
    "context_tokens",
    "cut_tokens",
)


@dataclass(frozen=True, kw_only=True)
class CalibrationSample:
    """One fitted, model-answered sample of exact length ``bucket``."""

    sample_id: str
    bucket: int
    input_ids: list[int]
    answer_start: int
    answer_end: int
    source: str = ""
    task: str = ""
    record_index: int = 0
    context_tokens: int = 0
    cut_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class CalibrationSet:
    """Samples plus provenance (a JSON-able dict; ``fingerprint`` holds the model fingerprint)."""

    samples: list[CalibrationSample]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> ModelFingerprint | None:
        """The fingerprint of the model that answered the samples, if recorded."""
        fp = self.provenance.get("fingerprint")
        return ModelFingerprint.model_validate(fp) if fp else None

    def lengths(self) -> list[int]:
        """The distinct buckets, ascending."""
        return sorted({s.bucket for s in self.samples})

    def at_length(self, length: int) -> list[CalibrationSample]:
        """Samples of one bucket, in file order."""
        return [s for s in self.samples if s.bucket == length]


def write_calibration(path: str | Path, calibration: CalibrationSet) -> Path:
    """Write a calibration set as Parquet atomically.

    Raises:
        CalibrationError: if the set has no samples.
    """
    import polars as pl
    import pyarrow.parquet as pq

    if not calibration.samples:
        raise CalibrationError(f"{path}: refusing to write an empty calibration set")
    frame = pl.DataFrame(
        {name: [getattr(s, name) for s in calibration.samples] for name in _COLUMNS},
        schema={
            "sample_id": pl.String,
            "bucket": pl.Int64,
            "input_ids": pl.List(pl.Int32),
            "answer_start": pl.Int64,
            "answer_end": pl.Int64,
            "source": pl.String,
            "task": pl.String,
            "record_index": pl.Int64,
            "context_tokens": pl.Int64,
            "cut_tokens": pl.Int64,
        },
    )
    meta = {"format": "moa-calibration", "format_version": CALIBRATION_FORMAT_VERSION, **calibration.provenance}
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, str(tmp)))


def read_calibration(path: str | Path) -> CalibrationSet:
    """Read and validate a calibration set written by `write_calibration`.

    Raises:
        CalibrationError: one sentence naming the file and the problem.
    """
    import polars as pl
    import pyarrow.parquet as pq

    p = require_file(path, "calibration", CalibrationError)
    try:
        schema = pq.read_schema(str(p))
        frame = pl.read_parquet(p)
    except Exception as exc:  # pyarrow/polars raise several types for non-Parquet files
        raise CalibrationError(f"{p}: not a readable Parquet calibration set ({exc.__class__.__name__})") from None
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise CalibrationError(f"{p}: Parquet file has no moa-calibration metadata; write it with `moa calibrate`")
    try:
        provenance = json.loads(raw)
    except json.JSONDecodeError:
        raise CalibrationError(f"{p}: moa-calibration metadata is not JSON") from None
    if int(provenance.get("format_version", 0)) > CALIBRATION_FORMAT_VERSION:
        raise CalibrationError(f"{p}: calibration format_version {provenance.get('format_version')} is too new")
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise CalibrationError(f"{p}: calibration set lacks the columns {', '.join(missing)}")
    samples = [CalibrationSample(**{k: row[k] for k in _COLUMNS}) for row in frame.iter_rows(named=True)]
    if not samples:
        raise CalibrationError(f"{p}: calibration set holds no samples")
    _check_samples(samples, str(p))
    return CalibrationSet(samples=samples, provenance=provenance)


def _check_samples(samples: Sequence[CalibrationSample], src: str) -> None:
    seen: set[str] = set()
    for s in samples:
        if s.sample_id in seen:
            raise CalibrationError(f"{src}: sample id {s.sample_id!r} appears twice")
        seen.add(s.sample_id)
        if len(s.input_ids) != s.bucket:
            raise CalibrationError(f"{src}: sample {s.sample_id} has {len(s.input_ids)} tokens but bucket {s.bucket}")
        if not 1 <= s.answer_start < s.answer_end <= s.bucket:
            raise CalibrationError(
                f"{src}: sample {s.sample_id} has answer span [{s.answer_start}, {s.answer_end}) outside 1..{s.bucket}"
            )
