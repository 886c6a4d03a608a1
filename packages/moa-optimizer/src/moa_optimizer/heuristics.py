"""Cheap feasible starting points: the best plan that uses only two rules overall.

Any plan whose heads all use rule a or rule b meets a per-layer limit K >= 2, and its span
sum at each length is linear in the number m of heads on b. So for every pair (a, b) the
feasible m form an interval, and the best heads to move to b are those gaining the most loss.
This finds a feasible plan in milliseconds whenever one exists among two-rule plans (for
example the uniform plan at the budget), which the exact solvers then improve.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from moa_optimizer.model import Constraints, IntBudget
from moa_optimizer.tables import Problem

__all__ = ["two_rule_plan"]


def two_rule_plan(
    problem: Problem, objective: int, constraints: Constraints, budget: IntBudget
) -> npt.NDArray[np.int64] | None:
    """Best feasible ``[L, H]`` choice using at most two rules (one if the limit is 1), or None.

    Epsilon caps are checked on the result, not optimised for. Assumes every head has the same
    spans (the cost table of `Problem.from_profiles`); returns None otherwise.
    """
    L, H, R = problem.shape
    spans = problem.spans.reshape(len(problem.constrained), L * H, R)
    if not (spans == spans[:, :1, :]).all():
        return None
    s = spans[:, 0, :].astype(np.int64)  # [C, R]
    loss = problem.loss[objective].reshape(L * H, R)
    count = L * H
    single = problem.spans.shape[-1] if constraints.max_rules_per_layer == 1 else None
    best_value, best = np.inf, None
    for a in range(R):
        base = count * s[:, a]
        partners = [a] if single else range(R)
        for b in partners:
            d = s[:, b] - s[:, a]
            lo_m, hi_m = 0, count if b != a else 0
            for c in range(len(d)):
                if d[c] > 0:
                    lo_m = max(lo_m, -(-(budget.lo[c] - base[c]) // d[c]))
                    hi_m = min(hi_m, (budget.hi[c] - base[c]) // d[c])
                elif d[c] < 0:
                    lo_m = max(lo_m, -(-(base[c] - budget.hi[c]) // -d[c]))
                    hi_m = min(hi_m, (base[c] - budget.lo[c]) // -d[c])
                elif not budget.lo[c] <= base[c] <= budget.hi[c]:
                    hi_m = -1
            if lo_m > hi_m:
                continue
            gain = loss[:, a] - loss[:, b]
            order = np.argsort(-gain, kind="stable")
            cum = np.concatenate([[0.0], np.cumsum(gain[order])])
            m = int(lo_m + np.argmax(cum[lo_m : hi_m + 1]))
            value = float(loss[:, a].sum() - cum[m])
            if value < best_value:
                choice = np.full(count, a, dtype=np.int64)
                choice[order[:m]] = b
                best_value, best = value, choice.reshape(L, H)
    if best is None:
        return None
    for q, cap in constraints.caps.items():
        if np.take_along_axis(problem.loss[q], best[..., None], -1).sum() > cap:
            return None
    return best
