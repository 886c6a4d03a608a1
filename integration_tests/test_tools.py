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
