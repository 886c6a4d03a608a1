"""The tools/ scripts a user runs by hand: bad input is one sentence and exit 2, before anything heavy starts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP = ROOT / "tools" / "llamacpp_reference.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LLAMACPP), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "4k"], "--lengths must be comma-separated integers, got '4k'."),
        (["--lengths", "0,4096"], "--lengths must be positive token counts, got '0,4096'."),
        (["--lengths", ","], "--lengths must be positive token counts, got ','."),
        (["--new-tokens", "2"], "--new-tokens must be at least 3 (the first two steps are warm-up), got 2."),
        (["--threads", "0"], "--threads must be at least 1, got 0."),
        (["--gguf", "/nonexistent/m.gguf"], "GGUF file not found: /nonexistent/m.gguf (run `make assets` first)."),
    ],
)
def test_llamacpp_reference_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = _run("--gguf", str(gguf), *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama_cpp is installed here")
def test_llamacpp_reference_outside_its_venv(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = _run("--gguf", str(gguf), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "run this script with the python of the venv that `--setup VENV` built" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


PROBE = ROOT / "tools" / "probe_plan.py"
PLAN_25 = ROOT / "plans" / "smollm2-135m-instruct" / "moa-gate64-1k2k-reference-0.25.json"


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60)


def test_probe_plan_fixes_one_slope_and_keeps_the_rest(tmp_path: Path) -> None:
    from moa_plan import Plan

    out = tmp_path / "probe.json"
    result = _probe(str(PLAN_25), "--beta", "0.125", "--tokens", "512", "--out", str(out))
    assert result.returncode == 0, result.stderr
    source, probe = Plan.load(PLAN_25), Plan.load(out)
    local = source.betas == 0.125
    assert local.sum() == 61  # the committed 25% plan's N/8 heads (RESULTS.md, twenty-eighth session)
    for n in (1024, 2048, 4096, 8192):
        # The probed heads hold 512 tokens at every length (N permitting); every other head keeps its span.
        assert (probe.spans(n)[local] == min(n, 512)).all()
        assert (probe.spans(n)[~local] == source.spans(n)[~local]).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "0.3", "--tokens", "512"], f"error: no rule of {PLAN_25} has slope 0.3"),
        (["--beta", "0.125", "--tokens", "0"], "error: --tokens must be a positive number of tokens, got 0"),
    ],
)
def test_probe_plan_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    result = _probe(str(PLAN_25), *args, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not out.exists()


def test_probe_plan_missing_plan_and_unwritable_out(tmp_path: Path) -> None:
    missing = _probe(str(tmp_path / "none.json"), "--beta", "0.125", "--tokens", "8", "--out", str(tmp_path / "p.json"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read plan ")
    assert len(missing.stderr.strip().splitlines()) == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = _probe(str(PLAN_25), "--beta", "0.125", "--tokens", "8", "--out", str(blocked / "p.json"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: cannot write {blocked / 'p.json'}")
    assert len(result.stderr.strip().splitlines()) == 1
