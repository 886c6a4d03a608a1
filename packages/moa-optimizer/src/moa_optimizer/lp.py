"""LP relaxation (GLOP) of the rule-choice program, and the per-layer best rule subsets.

The LP (without the rule limit) is the fallback lower bound when pricing is inexact (K >= 3).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp

from moa_optimizer.model import Constraints, IntBudget
from moa_optimizer.tables import Problem

__all__ = ["LPResult", "best_subsets", "solve_lp"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LPResult:
    """The relaxation's value (a lower bound), solution ``x [L, H, R]`` and row duals.

    ``duals[c]`` is the price of one token of span at constrained length c (>= 0 when the
    upper row binds, <= 0 when the lower row binds); ``cap_duals[q]`` the price of objective q.
    """

    value: float
    x: npt.NDArray[np.float64]
    duals: npt.NDArray[np.float64]
    cap_duals: dict[int, float]
    seconds: float


def solve_lp(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    budget: IntBudget,
    *,
    with_rule_limit: bool = False,
    time_limit: float | None = None,
) -> LPResult | None:
    """Solve the relaxation with GLOP; None if it is infeasible (then the integer program is
    too) or the time limit passed. The rule limit is left out unless ``with_rule_limit``: its
    linking rows make the LP about 7x slower, and `round_lp` recovers a bound for it."""
    start = time.perf_counter()
    L, H, R = problem.shape
    solver = pywraplp.Solver.CreateSolver("GLOP")
    x = [solver.NumVar(0.0, 1.0, "") for _ in range(L * H * R)]
    for head in range(L * H):
        row = solver.Constraint(1.0, 1.0)
        for v in x[head * R : (head + 1) * R]:
            row.SetCoefficient(v, 1.0)
    spans = problem.spans.reshape(len(problem.constrained), -1)
    rows = []
    for c in range(len(problem.constrained)):
        row = solver.Constraint(float(budget.lo[c]), float(budget.hi[c]))
        for v, s in zip(x, spans[c].tolist(), strict=True):
            row.SetCoefficient(v, s)
        rows.append(row)
    losses = problem.loss.reshape(len(problem.profiled), -1)
    cap_rows = {}
    for q, cap in constraints.caps.items():
        row = solver.Constraint(-solver.infinity(), float(cap))
        for v, w in zip(x, losses[q].tolist(), strict=True):
            row.SetCoefficient(v, w)
        cap_rows[q] = row
    k = constraints.max_rules_per_layer
    if with_rule_limit and k is not None and k < R:
        for layer in range(L):
            y = [solver.NumVar(0.0, 1.0, "") for _ in range(R)]
            limit = solver.Constraint(-solver.infinity(), float(k))
            for v in y:
                limit.SetCoefficient(v, 1.0)
            for head in range(H):
                base = (layer * H + head) * R
                for r in range(R):
                    link = solver.Constraint(-solver.infinity(), 0.0)
                    link.SetCoefficient(x[base + r], 1.0)
                    link.SetCoefficient(y[r], -1.0)
    objective_row = solver.Objective()
    for v, w in zip(x, losses[objective].tolist(), strict=True):
        objective_row.SetCoefficient(v, w)
    objective_row.SetMinimization()
    if time_limit is not None:
        solver.SetTimeLimit(max(1, int(time_limit * 1000)))
    status = solver.Solve()
    seconds = time.perf_counter() - start
    if status != pywraplp.Solver.OPTIMAL:
        log.debug("LP relaxation status %s after %.2fs", status, seconds)
        return None
    values = np.array([v.solution_value() for v in x]).reshape(L, H, R)
    return LPResult(
        value=float(objective_row.Value()),
        x=values,
        duals=np.array([row.dual_value() for row in rows]),
        cap_duals={q: float(row.dual_value()) for q, row in cap_rows.items()},
        seconds=seconds,
    )


def best_subsets(cost: npt.NDArray[np.float64], k: int) -> tuple[list[npt.NDArray[np.int64]], float, bool]:
    """Per layer, the rule set of size <= k minimising the sum over heads of the cheapest rule in it.

    Exact for k <= 2 (all pairs), greedy beyond. Returns the sets, the summed minimum, and
    whether it is exact.
    """
    L = cost.shape[0]
    sets, total = [], 0.0
    for layer in range(L):
        c = cost[layer]
        if k == 1:
            r = int(c.sum(axis=0).argmin())
            sets.append(np.array([r]))
            total += float(c[:, r].sum())
            continue
        pair = np.minimum(c[:, :, None], c[:, None, :]).sum(axis=0)
        a, b = np.unravel_index(int(pair.argmin()), pair.shape)
        chosen = sorted({int(a), int(b)})
        best = np.minimum(c[:, a], c[:, b])
        for _ in range(k - 2):
            gains = np.minimum(best[:, None], c).sum(axis=0)
            r = int(gains.argmin())
            chosen = sorted({*chosen, r})
            best = np.minimum(best, c[:, r])
        sets.append(np.array(chosen, dtype=np.int64))
        total += float(best.sum())
    return sets, total, k <= 2
