"""Fixtures: a tiny word-level tokenizer with a chat template and tiny seeded Llama models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moa_profiler.testing import CHAT_TEMPLATE, make_model, make_tokenizer, records_file, text


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def model_factory() -> Callable[..., torch.nn.Module]:
    return make_model


@pytest.fixture
def words() -> Callable[[int, int], str]:
    return text


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A saved tiny model + tokenizer directory (what ``--model`` takes)."""
    path = tmp_path / "tiny-model"
    make_model(layers=2, heads=4, kv_heads=2, seed=1, std=0.2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def save_model_dir() -> Callable[..., Path]:
    """Save a tiny model and tokenizer under a directory; keyword arguments go to the builders."""

    def save(path: Path, *, chat_template: str | None = CHAT_TEMPLATE, **model_kwargs: object) -> Path:
        make_model(**model_kwargs).save_pretrained(path)  # type: ignore[arg-type]
        make_tokenizer(chat_template).save_pretrained(path)
        return path

    return save


@pytest.fixture
def calibration_file(tmp_path: Path, model_dir: Path) -> Path:
    """A calibration set of the ``model_dir`` model: 6 samples of 96 tokens and 3 of 160."""
    from moa_profiler.calibration import CalibrationSettings, build_calibration
    from moa_profiler.dataset import CalibrationSet, write_calibration
    from moa_profiler.models import fingerprint_of, load_model, load_tokenizer
    from moa_profiler.records import load_records

    records = load_records(records_file(tmp_path / "records.jsonl", [100, 110, 120, 105, 115, 125, 170, 180, 190]))
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    settings = CalibrationSettings(buckets=(96, 160), max_new_tokens=6, max_cut=0.6)
    samples = build_calibration(model, tokenizer, records, settings, source="fixture")
    provenance = {"fingerprint": fingerprint_of(model).model_dump(), "source": "fixture"}
    return write_calibration(tmp_path / "calib.parquet", CalibrationSet(samples=samples, provenance=provenance))
