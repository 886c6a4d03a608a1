"""`moa compress --answers`: reaches both calibration stages and re-runs them when it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import moa.pipeline as pipeline
from moa.cli import compress
from moa.pipeline import CompressSettings

REFERENCE = Path(__file__).resolve().parents[3] / "models" / "moa-reference"


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: str) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_moa(args: list[object], stage: str, echo: object) -> None:
        words = [str(a) for a in args]
        calls.append(words)
        Path(words[words.index("--out") + 1]).write_text("calibration")

    monkeypatch.setattr(pipeline, "_moa", fake_moa)
    s = CompressSettings(model=REFERENCE, densities=[0.5], lengths=[512], out=tmp_path, answers=answers)
    run = pipeline._Compress(s, lambda _: None)
    run.calibrate()
    return calls


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_answers_reach_calibrate_and_a_change_reruns_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tmp_path, monkeypatch, "model")  # the calibration set and the validation set (at 768)
    assert [c[c.index("--lengths") + 1] for c in first] == ["512", "768"]
    assert all(c[0] == "calibrate" and c[c.index("--answers") + 1] == "model" for c in first)
    assert _run(tmp_path, monkeypatch, "model") == []  # up to date: skipped
    again = _run(tmp_path, monkeypatch, "reference")
    assert len(again) == 2 and all(c[c.index("--answers") + 1] == "reference" for c in again)


def test_a_bad_answers_value_is_one_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        compress, ["--model", str(tmp_path), "--density", "0.5", "--answers", "gold", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "'gold' is not one of 'model', 'reference'" in result.output
