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

import numpy as np
import polars as pl
import pytest

from moa_plan import Plan, load_profile

ROOT = Path(__file__).resolve().parents[1]

COMPRESS = ["--density", "0.5", "--lengths", "256,512", "--sink", "16", "--block", "16", "--samples", "3",
            "--validation-samples", "2", "--time-limit", "120"]  # fmt: skip


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
    report = (compressed / "report.md").read_text()
    assert report.startswith("# moa compress report")
    # Each final plan's row carries its validation loss (the lowest of its budget's validation table).
    best = float(pl.read_parquet(compressed / "d0.5" / "validation.parquet")["loss"].min())
    assert f"| 0.5 MoA | `d0.5/plan.json` | {best:.3f} |" in report
    # The per-layer-only ablation: same budget, one rule shared by all heads of each layer.
    layer = Plan.load(compressed / "d0.5" / "layer" / "plan.json")
    for n in (256, 512, 1024):
        assert 0.45 - 1e-9 <= layer.density(n) <= 0.5 + 1e-9
        spans = layer.spans(n)
        assert (spans == spans[:, :1]).all(), spans
    assert "0.5 per-layer only" in report and "d0.5/layer/plan.json" in report
    # The DuoAttention-style ablation: every KV head whole or sink + one fixed window, at the same budget
    # (upper bound only: such a plan's density falls with N). Window: 0.5 x 256 / 2 - 16 = 48 tokens.
    duo = Plan.load(compressed / "d0.5" / "duo" / "plan.json")
    rules = {(float(a), float(b)) for a, b in zip(duo.alphas.ravel(), duo.betas.ravel(), strict=True)}
    assert rules <= {(0.0, 1.0), (16.0 + 48.0, 0.0)} and len(rules) == 2, rules
    for n in (256, 512, 1024):
        assert duo.density(n) <= 0.5 + 1e-9
    assert "0.5 DuoAttention-style" in report and "d0.5/duo/plan.json" in report


def test_rerun_skips_every_stage(compressed: Path, reference_model: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    before = (compressed / "d0.5" / "plan.json").read_bytes()
    proc = moa("compress", "--model", reference_model, *COMPRESS, "--out", compressed)
    assert proc.stderr.count("up to date, skipped") == 5, proc.stderr
    assert (compressed / "d0.5" / "plan.json").read_bytes() == before


def _copy(compressed: Path, tmp_path: Path) -> tuple[Path, bytes]:
    """A copy of the compressed directory to rerun in, and its final plan's bytes."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(compressed, out)
    return out, (out / "d0.5" / "plan.json").read_bytes()


def test_an_evaluation_only_change_reruns_only_the_evaluation(  # type: ignore[no-untyped-def]
    compressed: Path, reference_model: Path, tmp_path: Path, moa_cli
) -> None:
    out, before = _copy(compressed, tmp_path)
    proc = moa_cli("compress", "--model", reference_model, *COMPRESS, "--out", out, "--eval-lengths", "256",
                   "--eval-tasks", "lines", "--eval-samples", "2")  # fmt: skip
    assert proc.stderr.count("up to date, skipped") == 5, proc.stderr
    assert "[evaluate] moa eval retrieval" in proc.stderr and (out / "eval" / "retrieval.md").is_file()
    assert (out / "d0.5" / "plan.json").read_bytes() == before


def test_a_perplexity_guard_reruns_the_validation_only(  # type: ignore[no-untyped-def]
    compressed: Path, reference_model: Path, tmp_path: Path, moa_cli
) -> None:
    out, before = _copy(compressed, tmp_path)
    # A bound no plan reaches: the guard measures every plan on calibration essays and changes no choice.
    proc = moa_cli("compress", "--model", reference_model, *COMPRESS, "--out", out, "--max-ppl-increase", "1e9")
    assert proc.stderr.count("up to date, skipped") == 4, proc.stderr
    assert "perplexity guard: dense" in proc.stderr
    table = (out / "d0.5" / "validation.md").read_text()
    assert "| plan | loss | ppl_increase | feasible |" in table
    rows = pl.read_parquet(out / "d0.5" / "validation.parquet")
    assert rows["feasible"].all() and rows["ppl_increase"].is_finite().all()
    assert (out / "d0.5" / "plan.json").read_bytes() == before
    # Without essays the guard fails before any stage runs, in one sentence.
    env = {**os.environ, "MOA_CACHE_DIR": str(tmp_path / "empty")}
    bad = subprocess.run([sys.executable, "-m", "moa_plan.cli", "compress", "--model", str(reference_model),
                          *COMPRESS, "--out", str(tmp_path / "o"), "--max-ppl-increase", "2"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and "the Paul Graham essays are not in" in last, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o" / "manifest.json").exists()


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
    for n in (256, 512):
        name = f"profile-{n}.safetensors"
        a, b = load_profile(out / "profiles" / name), load_profile(compressed / "profiles" / name)
        np.testing.assert_allclose(a.hist, b.hist, rtol=1e-9, atol=0)
        assert a.num_samples == b.num_samples
    assert Plan.load(out / "d0.5" / "plan.json").rules == Plan.load(compressed / "d0.5" / "plan.json").rules
    assert not list(out.rglob("*.tmp")), "a half-written file was left behind"


def test_compress_with_the_ablation_statistic(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "abl"
    moa_cli("compress", "--model", reference_model, *COMPRESS, "--statistic", "ablation", "--no-layer-baseline",
            "--out", out)  # fmt: skip
    plan = Plan.load(out / "d0.5" / "plan.json")
    for n in (256, 512, 1024):
        assert 0.45 - 1e-9 <= plan.density(n) <= 0.5 + 1e-9
    for n in (256, 512):
        profile = load_profile(out / "profiles" / f"profile-{n}.safetensors")
        assert "ablation" in (profile.notes or "") and (profile.hist >= 0).all()
        shape = load_profile(out / "influence" / f"profile-{n}.safetensors")  # --shape (the default)
        assert "ablation" not in (shape.notes or "") and shape.length == n
    assert not (out / "d0.5" / "layer").exists()
    assert "profile statistic `ablation` shaped by the influence profile" in (out / "report.md").read_text()


def test_compress_from_a_records_file(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    """--records: a user's own documents, each cut to every profiled length (and the validation length)."""
    from moa_profiler.dataset import read_calibration
    from moa_profiler.testing import records_file

    records = records_file(tmp_path / "docs.jsonl", [900, 950, 1000])
    out = tmp_path / "rec"
    moa_cli("compress", "--model", reference_model, *COMPRESS, "--records", records, "--no-layer-baseline",
            "--no-duo-baseline", "--out", out)  # fmt: skip
    calib = read_calibration(out / "calibration.parquet")
    assert {n: len(calib.at_length(n)) for n in (256, 512)} == {256: 3, 512: 3}
    assert sorted({s.record_index for s in calib.at_length(256)}) == [0, 1, 2]
    assert read_calibration(out / "validation.parquet").lengths() == [768]
    assert "records `" in (out / "report.md").read_text()
    assert Plan.load(out / "d0.5" / "plan.json").density(512) <= 0.5 + 1e-9


def test_bad_inputs_exit_2_with_one_sentence(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    moa = moa_cli
    cases = [
        (["compress", "--model", tmp_path / "missing", *COMPRESS, "--out", tmp_path / "o1"], "not a model directory"),
        (["compress", "--model", reference_model, *COMPRESS[2:], "--density", "0.01", "--out", tmp_path / "o2"],
         "stage optimize failed"),
        (["compress", "--model", reference_model, *COMPRESS, "--task", "rewrite,lines", "--eval-lengths", "512",
          "--out", tmp_path / "o4"], "also an evaluation task"),
        (["compress", "--model", reference_model, *COMPRESS, "--task", "nosuch", "--out", tmp_path / "o5"],
         "stage calibrate failed"),
        (["validate", "--model", reference_model, "--plans", tmp_path / "none", "--data", tmp_path / "x.parquet",
          "--out", tmp_path / "o3"], "no such plan file or directory"),
    ]  # fmt: skip
    for args, expected in cases:
        proc = moa(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and expected in last, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_custom_optimizer_package_replaces_the_builtin(reference_model: Path, tmp_path: Path) -> None:
    """A third-party optimizer, pip-installed (into a target directory on the path), drives `moa compress`."""
    fixture = ROOT / "packages" / "moa-optimizer" / "tests" / "fixtures" / "toy_optimizer"
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(fixture)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "toy"
    cmd = [sys.executable, "-m", "moa_plan.cli", "compress", "--model", str(reference_model), *COMPRESS,
           "--optimizer", "toy", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = Plan.load(out / "d0.5" / "plan.json")
    assert plan.provenance.notes == "toy"
    assert len({r for row in plan.rules for r in row}) == 1  # the toy's uniform rule, not the builtin's mix


def test_profiler_under_torchrun_with_two_gloo_ranks_matches_one_process(
    compressed: Path, reference_model: Path, tmp_path: Path
) -> None:
    """The cluster story: the pipeline's calibration set profiled by 2 gloo ranks == the pipeline's profiles."""
    import numpy as np

    from moa_plan import load_profile

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "moa_profiler", "profile", str(compressed / "calibration.parquet"), "--model", str(reference_model),
           "--out", str(tmp_path / "two"), "--sink", "16", "--block", "16", "--quiet", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for n in (256, 512):
        one = load_profile(compressed / "profiles" / f"profile-{n}.safetensors")
        two = load_profile(tmp_path / "two" / f"profile-{n}.safetensors")
        assert one.num_samples == two.num_samples
        np.testing.assert_allclose(two.hist, one.hist, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(two.sink_influence, one.sink_influence, rtol=1e-5, atol=1e-9)
