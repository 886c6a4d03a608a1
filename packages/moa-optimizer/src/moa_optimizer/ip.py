"""The integer program: one rule per KV head, density bounds, a per-layer rule limit.

    minimise    sum_{l,h,r} loss[p, l, h, r] x[l, h, r]
    subject to  sum_r x[l, h, r] = 1                                   for every (l, h)
                lo_c <= sum_{l,h,r} span[c, r] x[l, h, r] <= hi_c        for every constrained N_c
                x[l, h, r] <= y[l, r],  sum_r y[l, r] <= K               for every layer l (if K)
                sum_{l,h,r} loss[q, l, h, r] x[l, h, r] <= cap_q         epsilon constraints
                x, y binary

`solve` is a pure function (arrays in, a `Solution` out). The LP relaxation (GLOP) gives a
lower bound and a rounded warm start; CP-SAT (default) or a MIP solver then improves it under
a time limit in seconds. The best feasible solution found is always kept, with its gap.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from moa_optimizer.errors import InfeasibleBudgetError, OptimizerError
from moa_optimizer.lp import LPResult, round_lp, solve_lp
from moa_optimizer.model import Constraints, IntBudget, infeasible_message, int_budget
from moa_optimizer.tables import Problem

__all__ = ["BACKENDS", "Solution", "SolverOptions", "evaluate", "solve"]

log = logging.getLogger(__name__)

# HiGHS through pywraplp segfaulted here (OR-Tools 9.15) on a 36-variable model with a hint, so it is not offered.
BACKENDS = ("cp-sat", "scip", "cbc")
_MIP_NAMES = {"scip": "SCIP", "cbc": "CBC"}
# CP-SAT needs integer objective coefficients; the objective's largest possible value maps to this.
_OBJECTIVE_SCALE_TARGET = 1e12


@dataclass(frozen=True, kw_only=True)
class SolverOptions:
    """How to solve.

    Attributes:
        backend: ``cp-sat`` (default) or a MIP solver: ``scip`` or ``cbc``.
        time_limit: Seconds per solve (None: until proven optimal).
        threads: Solver threads.
        use_lp: Solve the LP relaxation first for a bound and a warm start.
        lp_rule_limit: Include the per-layer rule limit in the LP (slower; the Lagrangian bound
            of `round_lp` usually recovers most of its strength).
        seed: Solver random seed.
        relative_gap: Stop when the proven relative gap is at most this.
    """

    backend: str = "cp-sat"
    time_limit: float | None = 10.0
    threads: int = 2
    use_lp: bool = True
    lp_rule_limit: bool = False
    seed: int = 0
    relative_gap: float = 1e-6


@dataclass(frozen=True, kw_only=True)
class Solution:
    """A solved program.

    Attributes:
        choice: ``[L, H]`` int64 rule index per KV head.
        objective: Index of the minimised profiled length.
        objectives: Float loss at every profiled length, ``[P]``.
        bound: Proven lower bound on the minimised loss (float units, scaling error subtracted).
        gap: ``(value - bound) / value`` (0 when proven optimal up to scaling).
        status: ``optimal`` or ``feasible`` (time limit hit).
        backend: The solver that produced ``choice`` (``lp-rounding`` if the solver did not improve it).
        seconds: Wall time of the whole solve.
        lp_bound: LP relaxation value (or the Lagrangian bound at its prices under a rule limit), or None.
        scaling_error: Largest possible difference between CP-SAT's integer objective and the float loss.
    """

    choice: npt.NDArray[np.int64]
    objective: int
    objectives: tuple[float, ...]
    bound: float
    gap: float
    status: str
    backend: str
    seconds: float
    lp_bound: float | None
    scaling_error: float

    @property
    def value(self) -> float:
        """The minimised loss."""
        return self.objectives[self.objective]


def evaluate(problem: Problem, choice: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Loss at every profiled length ``[P]`` and span sum at every constrained length ``[C]`` of a choice."""
    idx = choice[None, :, :, None]
    losses = np.take_along_axis(problem.loss, np.broadcast_to(idx, (problem.loss.shape[0], *idx.shape[1:])), -1)
    spans = np.take_along_axis(problem.spans, np.broadcast_to(idx, (problem.spans.shape[0], *idx.shape[1:])), -1)
    return losses.sum(axis=(1, 2, 3)), spans.sum(axis=(1, 2, 3))


def _feasible(problem: Problem, constraints: Constraints, budget: IntBudget, choice: npt.NDArray[np.int64]) -> bool:
    losses, spans = evaluate(problem, choice)
    if (spans > budget.hi).any() or (spans < budget.lo).any():
        return False
    if any(losses[q] > cap + 1e-9 * max(1.0, abs(cap)) for q, cap in constraints.caps.items()):
        return False
    k = constraints.max_rules_per_layer
    return k is None or all(len(np.unique(row)) <= k for row in choice)


def solve(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    options: SolverOptions | None = None,
    *,
    hint: npt.NDArray[np.int64] | None = None,
) -> Solution:
    """Minimise the loss at ``problem.profiled[objective]`` under ``constraints``.

    Args:
        problem: Dense loss and span arrays.
        objective: Index into ``problem.profiled``.
        constraints: Density bounds, rule limit, epsilon caps.
        options: Backend, time limit (seconds), threads.
        hint: Optional ``[L, H]`` warm start (used if no LP hint is better).

    Returns:
        The best feasible solution found, with a proven bound and gap.

    Raises:
        InfeasibleBudgetError: if no plan meets the constraints.
        OptimizerError: if the time limit passed before any feasible solution was found.
    """
    opts = options or SolverOptions()
    if opts.backend not in BACKENDS:
        raise OptimizerError(f"unknown solver backend {opts.backend!r}; choose one of {', '.join(BACKENDS)}")
    start = time.perf_counter()
    budget = int_budget(problem, constraints)
    lp: LPResult | None = None
    lp_bound = -math.inf
    candidates: list[npt.NDArray[np.int64]] = []
    if hint is not None and _feasible(problem, constraints, budget, hint):
        candidates.append(hint)
    if opts.use_lp:
        lp = solve_lp(
            problem, objective, constraints, budget, with_rule_limit=opts.lp_rule_limit, time_limit=opts.time_limit
        )
        if lp is None:
            raise InfeasibleBudgetError(_infeasible(problem, constraints))
        heuristic_time = None if opts.time_limit is None else 0.3 * opts.time_limit
        rounded, lp_bound = round_lp(problem, objective, constraints, budget, lp, time_limit=heuristic_time)
        if rounded is not None:
            candidates.append(rounded)
    best_hint = min(candidates, key=lambda c: evaluate(problem, c)[0][objective]) if candidates else hint
    remaining = None if opts.time_limit is None else max(0.05, opts.time_limit - (time.perf_counter() - start))
    if opts.backend == "cp-sat":
        result = _solve_cpsat(problem, objective, constraints, budget, opts, remaining, best_hint)
    else:
        result = _solve_mip(problem, objective, constraints, budget, opts, remaining, best_hint)
    choice, solver_bound, proven, scaling_error = result
    used = opts.backend
    hint_value = evaluate(problem, candidates[0])[0][objective] if candidates else math.inf
    if candidates:
        best_hint = min(candidates, key=lambda c: evaluate(problem, c)[0][objective])
        hint_value = evaluate(problem, best_hint)[0][objective]
    if choice is None or hint_value < evaluate(problem, choice)[0][objective]:
        if best_hint is None or not candidates:
            if proven:
                raise InfeasibleBudgetError(_infeasible(problem, constraints))
            raise OptimizerError(
                f"no feasible plan found within the time limit of {opts.time_limit} s; raise --time-limit"
            )
        choice, used = best_hint, "lp-rounding"
    assert choice is not None
    if not _feasible(problem, constraints, budget, choice):
        raise OptimizerError("internal error: the solver returned a plan that violates the budget")
    losses, _ = evaluate(problem, choice)
    value = float(losses[objective])
    bound = max(solver_bound, lp_bound)
    bound = min(bound, value)
    gap = 0.0 if value <= 0 else (value - bound) / value
    status = "optimal" if proven or gap <= opts.relative_gap else "feasible"
    return Solution(
        choice=choice,
        objective=objective,
        objectives=tuple(float(v) for v in losses),
        bound=float(bound),
        gap=float(max(gap, 0.0)),
        status=status,
        backend=used,
        seconds=time.perf_counter() - start,
        lp_bound=None if lp is None else lp_bound,
        scaling_error=scaling_error,
    )


def _infeasible(problem: Problem, constraints: Constraints) -> str:
    text = infeasible_message(problem, constraints)
    if constraints.caps:
        text = "no plan meets the budget and the epsilon caps together (" + text.removeprefix("no plan ") + ")"
    return text


_Result = tuple[npt.NDArray[np.int64] | None, float, bool, float]


def _scaled(values: npt.NDArray[np.float64], scale: float) -> list[int]:
    return np.rint(values.reshape(-1) * scale).astype(np.int64).tolist()


def _solve_cpsat(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    budget: IntBudget,
    opts: SolverOptions,
    time_limit: float | None,
    hint: npt.NDArray[np.int64] | None,
) -> _Result:
    L, H, R = problem.shape
    model = cp_model.CpModel()
    x = [model.new_bool_var("") for _ in range(L * H * R)]
    for head in range(L * H):
        model.add_exactly_one(x[head * R : (head + 1) * R])
    spans = problem.spans.reshape(len(problem.constrained), -1)
    for c in range(len(problem.constrained)):
        total = cp_model.LinearExpr.weighted_sum(x, spans[c].tolist())
        model.add_linear_constraint(total, int(budget.lo[c]), int(budget.hi[c]))
    losses = problem.loss.reshape(len(problem.profiled), -1)
    # One scale per objective so each one's worst-case total maps to about 1e12 (fits int64 easily).
    worst = problem.loss.max(axis=-1).sum(axis=(1, 2))
    scales = _OBJECTIVE_SCALE_TARGET / np.maximum(worst, 1e-300)
    for q, cap in constraints.caps.items():
        model.add(cp_model.LinearExpr.weighted_sum(x, _scaled(losses[q], scales[q])) <= math.floor(cap * scales[q]))
    k = constraints.max_rules_per_layer
    if k is not None and k < R:
        for layer in range(L):
            y = [model.new_bool_var("") for _ in range(R)]
            model.add(sum(y) <= k)
            for head in range(H):
                base = (layer * H + head) * R
                for r in range(R):
                    model.add_implication(x[base + r], y[r])
            if hint is not None:
                used = set(hint[layer].tolist())
                for r in range(R):
                    model.add_hint(y[r], r in used)
    model.minimize(cp_model.LinearExpr.weighted_sum(x, _scaled(losses[objective], scales[objective])))
    if hint is not None:
        flat = hint.reshape(-1)
        for head in range(L * H):
            for r in range(R):
                model.add_hint(x[head * R + r], r == flat[head])
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = max(1, opts.threads)
    solver.parameters.random_seed = opts.seed
    solver.parameters.relative_gap_limit = opts.relative_gap
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = float(time_limit)
    status = solver.solve(model)
    scaling_error = 0.5 * L * H / scales[objective]
    if status == cp_model.INFEASIBLE:
        return None, -math.inf, True, scaling_error
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, -math.inf, False, scaling_error
    values = np.array([solver.boolean_value(v) for v in x], dtype=bool).reshape(L, H, R)
    bound = solver.best_objective_bound / scales[objective] - scaling_error
    return values.argmax(axis=-1).astype(np.int64), float(bound), status == cp_model.OPTIMAL, float(scaling_error)


def _solve_mip(
    problem: Problem,
    objective: int,
    constraints: Constraints,
    budget: IntBudget,
    opts: SolverOptions,
    time_limit: float | None,
    hint: npt.NDArray[np.int64] | None,
) -> _Result:
    L, H, R = problem.shape
    solver = pywraplp.Solver.CreateSolver(_MIP_NAMES[opts.backend])
    if solver is None:
        raise OptimizerError(f"the OR-Tools build here has no {_MIP_NAMES[opts.backend]} solver")
    x = [solver.BoolVar("") for _ in range(L * H * R)]
    for head in range(L * H):
        solver.Add(solver.Sum(x[head * R : (head + 1) * R]) == 1)
    spans = problem.spans.reshape(len(problem.constrained), -1)
    for c in range(len(problem.constrained)):
        row = solver.Constraint(float(budget.lo[c]), float(budget.hi[c]))
        for v, s in zip(x, spans[c].tolist(), strict=True):
            row.SetCoefficient(v, s)
    losses = problem.loss.reshape(len(problem.profiled), -1)
    for q, cap in constraints.caps.items():
        row = solver.Constraint(-solver.infinity(), float(cap))
        for v, w in zip(x, losses[q].tolist(), strict=True):
            row.SetCoefficient(v, w)
    y: list[pywraplp.Variable] = []
    k = constraints.max_rules_per_layer
    if k is not None and k < R:
        for layer in range(L):
            ys = [solver.BoolVar("") for _ in range(R)]
            y.extend(ys)
            solver.Add(solver.Sum(ys) <= k)
            for head in range(H):
                base = (layer * H + head) * R
                for r in range(R):
                    solver.Add(x[base + r] <= ys[r])
    obj = solver.Objective()
    for v, w in zip(x, losses[objective].tolist(), strict=True):
        obj.SetCoefficient(v, w)
    obj.SetMinimization()
    if hint is not None:
        onehot = np.zeros((L * H, R))
        onehot[np.arange(L * H), hint.reshape(-1)] = 1.0
        hvars, hvals = list(x), onehot.reshape(-1).tolist()
        if y:
            used = np.zeros((L, R))
            for layer in range(L):
                used[layer, np.unique(hint[layer])] = 1.0
            hvars += y
            hvals += used.reshape(-1).tolist()
        solver.SetHint(hvars, hvals)
    solver.SetNumThreads(max(1, opts.threads))
    if time_limit is not None:
        solver.SetTimeLimit(max(1, int(time_limit * 1000)))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, opts.relative_gap)
    status = solver.Solve(params)
    if status == pywraplp.Solver.INFEASIBLE:
        return None, -math.inf, True, 0.0
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None, -math.inf, False, 0.0
    values = np.array([v.solution_value() for v in x]).reshape(L, H, R)
    return values.argmax(axis=-1).astype(np.int64), float(obj.BestBound()), status == pywraplp.Solver.OPTIMAL, 0.0
