"""LP relaxation (GLOP) of the rule-choice program, and rounding it to a good integer hint.

A multiple-choice knapsack with C side constraints has an LP optimum with at most C
fractional heads, so rounding is nearly optimal and the LP value is a tight lower bound.
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

__all__ = ["LPResult", "reduced_costs", "repair", "round_lp", "solve_lp"]

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


def reduced_costs(problem: Problem, objective: int, lp: LPResult) -> npt.NDArray[np.float64]:
    """``[L, H, R]`` loss plus the LP's prices of span and of the capped objectives."""
    # GLOP duals are d(objective)/d(rhs): <= 0 on a binding upper row, >= 0 on a binding lower row.
    cost = problem.loss[objective] - np.tensordot(lp.duals, problem.spans.astype(np.float64), axes=(0, 0))
    for q, dual in lp.cap_duals.items():
        cost = cost - dual * problem.loss[q]
    return cost


def _best_subsets(cost: npt.NDArray[np.float64], k: int) -> tuple[list[npt.NDArray[np.int64]], float, bool]:
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


def round_lp(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    budget: IntBudget,
    lp: LPResult,
    *,
    iterations: int = 100,
    time_limit: float | None = None,
) -> tuple[npt.NDArray[np.int64] | None, float]:
    """A feasible integer choice ``[L, H]`` near the LP optimum (None if none was found) and a lower bound.

    Without a rule limit each head takes its largest LP value (at most C heads are
    fractional), then `repair` fixes the budget rows. With a limit K the program is relaxed in
    Lagrange fashion instead: at prices ``m`` for the density rows and ``nu`` for the caps,
    each layer takes the K rules that minimise its heads' summed priced loss (exactly, for
    K <= 2) and each head its cheapest kept rule. That minimum plus the prices times the
    right-hand sides is a lower bound of the rule-limited program for any prices; starting
    from the LP's duals, Polyak subgradient steps raise it, and every choice met on the way
    is repaired and kept if it is the best feasible one.
    """
    L, H, R = problem.shape
    k = constraints.max_rules_per_layer
    if k is None or k >= R:
        return repair(problem, objective, constraints, budget, lp.x.argmax(axis=-1).astype(np.int64)), lp.value
    spans = problem.spans.astype(np.float64)
    caps = sorted(constraints.caps)
    cap_rhs = np.array([constraints.caps[q] for q in caps], dtype=np.float64)
    m = -lp.duals.astype(np.float64)
    nu = np.array([-lp.cap_duals.get(q, 0.0) for q in caps], dtype=np.float64)
    hi, lo = budget.hi.astype(np.float64), budget.lo.astype(np.float64)
    best_bound, best_choice, best_value = lp.value, None, np.inf
    exact = k <= 2
    start = time.perf_counter()
    for _ in range(iterations):
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
        cost = problem.loss[objective] + np.tensordot(m, spans, axes=(0, 0))
        for i, q in enumerate(caps):
            cost = cost + nu[i] * problem.loss[q]
        sets, total, _ = _best_subsets(cost, k)
        choice = np.empty((L, H), dtype=np.int64)
        for layer, kept in enumerate(sets):
            choice[layer] = kept[cost[layer][:, kept].argmin(axis=-1)]
        value = total - float(np.maximum(m, 0) @ hi - np.maximum(-m, 0) @ lo) - float(nu @ cap_rhs)
        if exact:
            best_bound = max(best_bound, value)
        fixed = repair(problem, objective, constraints, budget, choice)
        if fixed is not None:
            v = float(np.take_along_axis(problem.loss[objective], fixed[..., None], axis=-1).sum())
            if v < best_value:
                best_choice, best_value = fixed, v
        used = np.take_along_axis(spans, np.broadcast_to(choice[None, ..., None], (len(hi), L, H, 1)), -1).sum(
            axis=(1, 2, 3)
        )
        g = np.where(m > 0, used - hi, np.where(m < 0, used - lo, np.maximum(used - hi, 0) - np.maximum(lo - used, 0)))
        g_nu = np.array(
            [np.take_along_axis(problem.loss[q], choice[..., None], -1).sum() - constraints.caps[q] for q in caps]
        )
        norm = float(g @ g + g_nu @ g_nu)
        target = best_value if np.isfinite(best_value) else value + 0.05 * abs(value) + 1e-12
        if norm == 0 or target - value <= 1e-9 * max(1.0, abs(value)):
            break
        step = (target - value) / norm
        m = m + step * g
        nu = np.maximum(nu + step * g_nu, 0.0)
    return best_choice, best_bound


def repair(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    budget: IntBudget,
    choice: npt.NDArray[np.int64],
    *,
    max_moves: int = 64,
) -> npt.NDArray[np.int64] | None:
    """Greedy single-head moves (within each layer's rule set when limited) until the budget
    holds; returns the repaired choice, or None if it gets stuck."""
    L, H, R = problem.shape
    choice = choice.copy()
    k = constraints.max_rules_per_layer
    allowed = np.ones((L, R), dtype=bool)
    if k is not None and k < R:
        allowed[:] = False
        for layer in range(L):
            allowed[layer, np.unique(choice[layer])] = True
    loss = problem.loss[objective]
    spans = problem.spans.astype(np.int64)
    caps = {q: cap for q, cap in constraints.caps.items()}
    heads = np.arange(H)
    for _ in range(max_moves):
        cur = np.take_along_axis(spans, choice[None, :, :, None], axis=-1)[..., 0]
        totals = cur.sum(axis=(1, 2))
        over = np.maximum(totals - budget.hi, 0)
        under = np.maximum(budget.lo - totals, 0)
        cap_excess = {
            q: float(np.take_along_axis(problem.loss[q], choice[..., None], axis=-1).sum() - cap)
            for q, cap in caps.items()
        }
        violation = float(over.sum() + under.sum()) + sum(max(e, 0.0) for e in cap_excess.values())
        if violation <= 0:
            return choice
        # Change in total violation of moving each head to each rule.
        delta = spans - cur[..., None]
        new_tot = totals[:, None, None, None] + delta
        new_violation = (
            (
                np.maximum(new_tot - budget.hi[:, None, None, None], 0)
                + np.maximum(budget.lo[:, None, None, None] - new_tot, 0)
            )
            .sum(axis=0)
            .astype(np.float64)
        )
        for q, excess in cap_excess.items():
            cur_q = np.take_along_axis(problem.loss[q], choice[..., None], axis=-1)
            new_violation += np.maximum(excess + problem.loss[q] - cur_q, 0.0)
        gain = violation - new_violation
        d_loss = loss - np.take_along_axis(loss, choice[..., None], axis=-1)
        score = np.where((gain > 0) & allowed[:, None, :], gain / (np.maximum(d_loss, 0) + 1e-12), -np.inf)
        best = int(np.argmax(score))
        if not np.isfinite(score.reshape(-1)[best]):
            return None
        layer, head, rule = (int(i) for i in np.unravel_index(best, score.shape))
        choice[layer, heads[head]] = rule
    return None
