"""Errors of moa-optimizer; all are `moa_plan.MoaError`, so the ``moa`` command exits 2 with one line."""

from __future__ import annotations

from moa_plan import MoaError

__all__ = ["InfeasibleBudgetError", "OptimizerError"]


class OptimizerError(MoaError):
    """Bad optimizer input (profiles, lengths, budgets, grid) or an unknown optimizer."""


class InfeasibleBudgetError(OptimizerError):
    """No plan in the rule grid meets the budget."""
