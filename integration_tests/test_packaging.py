"""Wheels build, declare sibling ranges (not pins), and moa-runtime works installed alone.

The installed-alone story: a fresh virtualenv with only moa-runtime and its dependencies (no
OR-Tools, no profiler, no optimizer) loads a committed plan, applies it and generates.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["moa-plan", "moa-kernels", "moa-runtime", "moa-profiler", "moa-optimizer", "moa"]
SIBLINGS = {p for p in PACKAGES}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
         *(str(ROOT / "packages" / p) for p in PACKAGES)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for wheel in out.glob("*.whl"):
        name = wheel.name.split("-")[0].replace("_", "-")
        found[name] = wheel
    assert set(found) == set(PACKAGES), sorted(found)
    return found


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_declares_sibling_ranges_not_pins(wheels: dict[str, Path], package: str) -> None:
    for req in _requires(wheels[package]):
        name = re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0].lower()
        if name in SIBLINGS:
            assert "==" not in req, f"{package} pins {req}"
            assert "<" in req and ">=" in req, f"{package} declares {req} without a compatible range"


def test_runtime_alone_in_a_fresh_venv(wheels: dict[str, Path], tmp_path: Path) -> None:
    env_dir = tmp_path / "alone"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # torch first and pinned, so the local CPU wheel is used (never a CUDA download).
    for args in (["torch==2.13.0"], [str(wheels[p]) for p in ("moa-plan", "moa-kernels", "moa-runtime")]):
        proc = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    script = f"""
import importlib.util, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from moa_plan import ModelFingerprint, Plan
from moa_runtime import apply_plan
for absent in ("ortools", "moa_optimizer", "moa_profiler", "polars"):
    assert importlib.util.find_spec(absent) is None, absent + " is installed"
plan = Plan.load({str(ROOT / "packages/moa-plan/tests/golden/plan_v1_gqa.json")!r})
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=8192)
model = LlamaForCausalLM(cfg).eval()
plan.check_compatible(model.config)
apply_plan(model, plan)
out = model.generate(torch.randint(0, 64, (2, 300)), max_new_tokens=5, do_sample=False)
assert out.shape == (2, 305), out.shape
print("ok")
"""
    proc = subprocess.run([str(py), "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
