"""Optimizer plugins: the entry-point group ``moa.optimizers``.

A plugin is a callable ``optimize(profiles: list[Profile], config: OptimizeConfig) -> list[Plan]``
registered as ``[project.entry-points."moa.optimizers"] NAME = "module:callable"``. The built-in
optimizer is registered the same way (``builtin``). Nothing is loaded at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from moa_optimizer.errors import OptimizerError

__all__ = ["GROUP", "OptimizerFn", "available_optimizers", "load_optimizer"]

GROUP = "moa.optimizers"
OptimizerFn = Callable[..., Any]


def available_optimizers() -> list[str]:
    """Names registered under ``moa.optimizers``, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_optimizer(name: str) -> OptimizerFn:
    """The optimizer callable registered as ``name``.

    Raises:
        OptimizerError: if no such optimizer is installed or it is not callable.
    """
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            fn = ep.load()
            if not callable(fn):
                raise OptimizerError(f"optimizer {name!r} ({ep.value}) is not callable")
            return fn  # type: ignore[no-any-return]
    known = ", ".join(available_optimizers()) or "none"
    raise OptimizerError(f"unknown optimizer {name!r}; installed optimizers: {known}")
