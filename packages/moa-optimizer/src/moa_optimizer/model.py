"""What one integer program asks for: objective, density bounds, rule limit, epsilon caps.

Shared by the LP relaxation, the CP-SAT and the MIP backends, so all three see the same
integer right-hand sides (spans are integers, so the density rows are exact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from moa_optimizer.errors import InfeasibleBudgetError
from moa_optimizer.tables import Problem

__all__ = ["BUDGET_TOL", "Constraints", "IntBudget", "density_range", "int_budget"]

# moa_plan.check_budget accepts densities within 1e-9 of a bound; use the same slack here.
BUDGET_TOL = 1e-9


@dataclass(frozen=True, kw_only=True)
class Constraints:
    """Constraints of one solve.

    Attributes:
        upper: Highest mean KV density at every constrained length.
        lower: Lowest mean KV density at every constrained length.
        max_rules_per_layer: At most this many distinct rules per layer (None: no limit).
        caps: Epsilon constraints: profiled-length index -> largest allowed loss there.
    """

    upper: float
    lower: float = 0.0
    max_rules_per_layer: int | None = 2
    caps: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class IntBudget:
    """Integer bounds on the sum of spans per constrained length: ``lo[c] <= sum spans <= hi[c]``."""

    lo: npt.NDArray[np.int64]
    hi: npt.NDArray[np.int64]


def density_range(problem: Problem) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Smallest and largest achievable mean KV density at each constrained length, ``[C]`` each."""
    L, H, _ = problem.shape
    n = np.asarray(problem.constrained, dtype=np.float64)
    lo = problem.spans.min(axis=-1).sum(axis=(1, 2)) / (n * L * H)
    hi = problem.spans.max(axis=-1).sum(axis=(1, 2)) / (n * L * H)
    return lo, hi


def infeasible_message(problem: Problem, constraints: Constraints) -> str:
    """One sentence: the budget and the smallest (and largest) achievable density at each length."""
    lo, hi = density_range(problem)
    smallest = ", ".join(f"{d:.4f} at N={n}" for d, n in zip(lo, problem.constrained, strict=True))
    text = (
        f"no plan of the rule grid meets the KV density budget [{constraints.lower:g}, {constraints.upper:g}]: "
        f"the smallest achievable density is {smallest}"
    )
    if constraints.lower > 0:
        largest = ", ".join(f"{d:.4f} at N={n}" for d, n in zip(hi, problem.constrained, strict=True))
        text += f", and the largest is {largest}"
    return text


def int_budget(problem: Problem, constraints: Constraints) -> IntBudget:
    """Integer span-sum bounds equivalent to the density bounds (with `check_budget`'s tolerance).

    Raises:
        InfeasibleBudgetError: if a bound is out of reach at some length on its own.
    """
    L, H, _ = problem.shape
    count = L * H
    lo_list, hi_list = [], []
    for n in problem.constrained:
        hi_list.append(math.floor((constraints.upper + BUDGET_TOL) * n * count))
        lo_list.append(max(0, math.ceil((constraints.lower - BUDGET_TOL) * n * count)))
    budget = IntBudget(lo=np.asarray(lo_list, dtype=np.int64), hi=np.asarray(hi_list, dtype=np.int64))
    smallest = problem.spans.min(axis=-1).sum(axis=(1, 2))
    largest = problem.spans.max(axis=-1).sum(axis=(1, 2))
    if (smallest > budget.hi).any() or (largest < budget.lo).any() or (budget.lo > budget.hi).any():
        raise InfeasibleBudgetError(infeasible_message(problem, constraints))
    return budget
