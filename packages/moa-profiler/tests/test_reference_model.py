"""End to end on the trained reference model (models/moa-reference): calibrate, then profile.

Skipped only while the model is not there: the directory is absent, or (while its training job
runs) holds no config.json yet. Anything else wrong with it fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from moa_plan import ModelFingerprint, load_profile
from moa_plan.cli import main
from moa_profiler.dataset import read_calibration
from moa_profiler.models import load_model

REFERENCE = Path(__file__).resolve().parents[3] / "models" / "moa-reference"

pytestmark = pytest.mark.skipif(
    not (REFERENCE / "config.json").is_file(), reason=f"{REFERENCE} holds no model yet (config.json absent)"
)


def test_calibrate_and_profile_reference_model(tmp_path: Path):
    calib_path, out = tmp_path / "calib.parquet", tmp_path / "profiles"
    result = CliRunner().invoke(
        main,
        ["calibrate", "--model", str(REFERENCE), "--task", "lines", "--lengths", "512,1024", "--num-samples", "2",
         "--max-new-tokens", "16", "--quiet", "--json", "-o", str(calib_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["per_length"] == {"512": 2, "1024": 2}
    calib = read_calibration(calib_path)
    model = load_model(REFERENCE)
    for s in calib.samples:
        prompt = torch.tensor([s.input_ids[: s.answer_start]])
        n = s.answer_end - s.answer_start
        direct = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False)
        assert direct[0, prompt.shape[1] :].tolist() == s.input_ids[s.answer_start : s.answer_end]
    result = CliRunner().invoke(
        main,
        ["profile", str(calib_path), "--model", str(REFERENCE), "-o", str(out), "--quiet", "--json", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.stderr
    fingerprint = ModelFingerprint.from_model_path(REFERENCE)
    for n in (512, 1024):
        profile = load_profile(out / f"profile-{n}.safetensors", model=fingerprint)
        assert profile.num_samples == 2
        assert profile.hist.shape[-1] == n - 64
        assert profile.hist.sum() > 0
