"""Errors raised by moa-runtime (all subclasses of `moa_plan.MoaError`, so the `moa` CLI prints one sentence)."""

from __future__ import annotations

from moa_plan import MoaError

__all__ = ["MoaRuntimeError"]


class MoaRuntimeError(MoaError):
    """A plan cannot be run on this model, input or cache (the message names the problem in one sentence)."""
