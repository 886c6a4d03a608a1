"""Solver-free checker: does a plan meet a KV budget at every constrained length?

Used on every plan an optimizer returns and by ``moa plan validate --budget``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moa_plan.plan import Plan

__all__ = ["Budget", "check_budget"]

# Densities are means of integer spans over N; compare with a little slack for float noise.
_TOL = 1e-9


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A KV budget: mean density in ``[lower, upper]`` at each length, and a rule-count cap.

    Attributes:
        lengths: Constrained total lengths N.
        upper: Highest allowed mean KV density.
        lower: Lowest allowed mean KV density (0 for none).
        max_rules_per_layer: Most distinct rules in one layer (None for no limit).
    """

    lengths: Sequence[int]
    upper: float
    lower: float = 0.0
    max_rules_per_layer: int | None = None


def check_budget(plan: Plan, budget: Budget) -> list[str]:
    """Every violated constraint of ``budget`` on ``plan``, one sentence each (empty if none)."""
    problems = []
    for n in budget.lengths:
        d = plan.density(n)
        if d > budget.upper + _TOL:
            problems.append(f"density at N={n} is {d:.4f}, above the upper bound {budget.upper:.4f}")
        if d < budget.lower - _TOL:
            problems.append(f"density at N={n} is {d:.4f}, below the lower bound {budget.lower:.4f}")
    if budget.max_rules_per_layer is not None:
        for layer, count in enumerate(plan.rules_per_layer()):
            if count > budget.max_rules_per_layer:
                problems.append(
                    f"layer {layer} uses {count} distinct rules, more than the limit {budget.max_rules_per_layer}"
                )
    return problems
