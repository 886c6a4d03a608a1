"""The whole stack through its public commands, on the committed reference model: compress (calibrate -> profile -> optimize ->
validate), resume without redoing stages, SIGKILL during profiling, then generate with the plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moa_plan import Plan

COMPRESS = ["--density", "0.5", "--lengths", "256,512", "--sink", "16", "--block", "16", "--samples", "3",
            "--validation-samples", "2", "--time-limit", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def compressed(reference_model: Path, tmp_path_factory: pytest.TempPathFactory, moa_cli) -> Path:  # type: ignore[no-untyped-def]
    moa = moa_cli
    out = tmp_path_factory.mktemp("compress")
    moa("compress", "--model", reference_model, *COMPRESS, "--out", out)
    return out


def test_compress_writes_a_plan_within_budget(compressed: Path, reference_model: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    plan = Plan.load(compressed / "d0.5" / "plan.json")
    # 0.9 x budget lower bound (the optimizer's default) and the budget, at profiled and extended lengths.
    for n in (256, 512, 1024):
        assert 0.45 - 1e-9 <= plan.density(n) <= 0.5 + 1e-9
    moa("plan", "validate", compressed / "d0.5" / "plan.json", "--model", reference_model, "--budget", "0.5",
        "--lengths", "256,512,1024")  # fmt: skip
    manifest = json.loads((compressed / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"calibrate", "validation-data", "profile", "optimize", "validate"}
    assert (compressed / "report.md").read_text().startswith("# moa compress report")


def test_rerun_skips_every_stage(compressed: Path, reference_model: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    before = (compressed / "d0.5" / "plan.json").read_bytes()
    proc = moa("compress", "--model", reference_model, *COMPRESS, "--out", compressed)
    assert proc.stderr.count("up to date, skipped") == 5, proc.stderr
    assert (compressed / "d0.5" / "plan.json").read_bytes() == before


def test_generate_with_the_plan(compressed: Path, reference_model: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    proc = moa("generate", "--model", reference_model, "--plan", compressed / "d0.5" / "plan.json",
               "--prompt", "line ab 12", "--max-new-tokens", "5")  # fmt: skip
    # A random model may well answer with end-of-text at once; the run itself must succeed cleanly.
    assert proc.returncode == 0
    assert proc.stderr == ""


def _stages_done(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["stages"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize(
    ("done", "sig"),
    [(0, signal.SIGKILL), (1, signal.SIGKILL), (2, signal.SIGKILL), (3, signal.SIGKILL), (4, signal.SIGKILL),
     (2, signal.SIGINT)],
    ids=["kill-calibrating", "kill-validation-data", "kill-profiling", "kill-optimizing", "kill-validating",
         "ctrl-c-profiling"],
)  # fmt: skip
def test_interrupted_compress_then_rerun_gives_the_same_plan(  # type: ignore[no-untyped-def]
    compressed: Path, reference_model: Path, tmp_path: Path, moa_cli, done: int, sig: signal.Signals
) -> None:
    """Interrupt `moa compress` while stage `done` runs; the rerun keeps finished stages, same plan."""
    moa = moa_cli
    out = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "moa_plan.cli",
        "compress",
        "--model",
        str(reference_model),
        *COMPRESS,
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A new session, so the signal reaches the pipeline and the stage it runs, as a terminal's would.
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while _stages_done(out) < done and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait()
    finished = _stages_done(out)
    assert finished < 5, "the run finished before the interruption"
    proc = moa("compress", "--model", reference_model, *COMPRESS, "--out", out)
    assert proc.stderr.count("up to date, skipped") == finished, proc.stderr
    assert Plan.load(out / "d0.5" / "plan.json").rules == Plan.load(compressed / "d0.5" / "plan.json").rules
    assert not list(out.rglob("*.tmp")), "a half-written file was left behind"


def test_bad_inputs_exit_2_with_one_sentence(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    cases = [
        (["compress", "--model", tmp_path / "missing", *COMPRESS, "--out", tmp_path / "o1"], "not a model directory"),
        (["compress", "--model", reference_model, *COMPRESS[2:], "--density", "0.01", "--out", tmp_path / "o2"],
         "stage optimize failed"),
        (["validate", "--model", reference_model, "--plans", tmp_path / "none", "--data", tmp_path / "x.parquet",
          "--out", tmp_path / "o3"], "no such plan file or directory"),
    ]  # fmt: skip
    for args, expected in cases:
        proc = moa(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and expected in last, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
