"""Run the real Triton kernels on CPU: the interpreter must be selected before triton is imported."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
