"""Peak memory of profiling grows about linearly with length (slow: two fresh subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_memory_growth_1024_to_2048_is_closer_to_2x_than_4x():
    cmd = [sys.executable, "-m", "moa_profiler.memory", "--lengths", "1024,2048", "--layers", "2", "--vocab", "4096"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    growth = json.loads(out.strip().splitlines()[-1])["extra_growth"][0]
    assert growth < 3.0, out
