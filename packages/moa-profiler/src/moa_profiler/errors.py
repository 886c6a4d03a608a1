"""Errors of the profiler: every one a `moa_plan.MoaError`, so the `moa` CLI exits 2 with one sentence."""

from __future__ import annotations

from moa_plan import MoaError

__all__ = ["CalibrationError", "ProfilerError"]


class CalibrationError(MoaError):
    """Records, tokenizer or buckets cannot produce a calibration set, or a calibration file is malformed."""


class ProfilerError(MoaError):
    """A profiling run cannot go on (non-finite loss, mismatched checkpoint, unsupported model)."""
