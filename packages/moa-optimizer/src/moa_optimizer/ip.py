"""The integer program: one rule per KV head, density bounds, a per-layer rule limit.

    minimise    sum_{l,h,r} loss[p, l, h, r] x[l, h, r]
    subject to  sum_r x[l, h, r] = 1                                   for every (l, h)
                lo_c <= sum_{l,h,r} span[c, r] x[l, h, r] <= hi_c        for every constrained N_c
                x[l, h, r] <= y[l, r],  sum_r y[l, r] <= K               for every layer l (if K)
                sum_{l,h,r} loss[q, l, h, r] x[l, h, r] <= cap_q         epsilon constraints
                x, y binary

`solve` is a pure function (arrays in, a `Solution` out). Column generation (`colgen`) gives a
lower bound at least as strong as the LP relaxation and a warm start; CP-SAT (default) or a MIP
solver then closes the gap under a time limit in seconds (CP-SAT: deterministic seconds, so the
same inputs give the same plan; see `moa_optimizer.cpsat`). The best feasible solution found is
always kept, with its gap.
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

from moa_optimizer.colgen import column_generation
from moa_optimizer.cpsat import deterministic_solver, reproducible
from moa_optimizer.errors import InfeasibleBudgetError, OptimizerError
from moa_optimizer.heuristics import two_rule_plan
from moa_optimizer.lp import solve_lp
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
        time_limit: Seconds per solve (None: until proven optimal). CP-SAT counts them in its
            deterministic seconds (about one second each on a quiet machine), so the same inputs
            and options give the same plan with one thread; a wall-clock guard of 10x stops a
            runaway solve.
        threads: CP-SAT workers. One (the default) is reproducible; more search faster on large
            programs but may return another plan of equal or near-equal loss each run.
        use_lp: Run column generation (LP master + exact pricing) first for a bound and a warm start.
        seed: Solver random seed.
        relative_gap: Stop when the proven relative gap is at most this.
    """

    backend: str = "cp-sat"
    time_limit: float | None = 10.0
    threads: int = 1
    use_lp: bool = True
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
        status: ``optimal`` (proven within ``relative_gap``) or ``feasible`` (time limit hit first).
        backend: The step that produced ``choice``: ``colgen`` or the backend's name.
        seconds: Wall time of the whole solve.
        lp_bound: The column-generation (Dantzig-Wolfe) bound, or the LP bound for K >= 3, or None.
        scaling_error: Largest possible difference between CP-SAT's integer objective and the float loss.
        reproducible: False when the same command may return another plan: several CP-SAT
            workers, a MIP backend stopped by its (wall-clock) limit, or a wall-clock guard that
            ended a phase before its deterministic limit or a proof.
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
    reproducible: bool = True

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

    Steps: a two-rule starting plan (`two_rule_plan`), column generation (`column_generation`:
    a lower bound and a near-optimal plan, usually within 0.1 %), then, unless that is already
    proven optimal, the exact backend on the full program warm-started from the best plan, for
    the rest of the time limit. The best feasible plan met anywhere is returned.

    Args:
        problem: Dense loss and span arrays.
        objective: Index into ``problem.profiled``.
        constraints: Density bounds, rule limit, epsilon caps.
        options: Backend, time limit (seconds), threads.
        hint: Optional ``[L, H]`` warm start.

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
    candidates: list[npt.NDArray[np.int64]] = []
    if hint is not None and _feasible(problem, constraints, budget, hint):
        candidates.append(hint)
    pair = two_rule_plan(problem, objective, constraints, budget)
    if pair is not None:
        candidates.append(pair)
    bound = -math.inf
    lp_bound: float | None = None
    cg_limit: float | None = None
    reproducible = True
    if opts.use_lp:
        # Leave half the time to the exact phase when its model is quick to build, else most to colgen.
        share = 0.5 if opts.time_limit is None or 4 * _build_seconds(problem) < opts.time_limit else 0.85
        cg_limit = None if opts.time_limit is None else share * opts.time_limit
        cg = column_generation(
            problem,
            objective,
            constraints,
            budget,
            candidates,
            time_limit=cg_limit,
            threads=opts.threads,
            seed=opts.seed,
        )
        reproducible = reproducible and cg.reproducible
        if cg.choice is not None and _feasible(problem, constraints, budget, cg.choice):
            candidates.append(cg.choice)
        bound = cg.bound
        if not math.isfinite(bound):
            # Inexact pricing (K >= 3): fall back to the LP relaxation without the rule limit.
            lp = solve_lp(problem, objective, constraints, budget, time_limit=opts.time_limit)
            if lp is None and not candidates:
                raise InfeasibleBudgetError(_infeasible(problem, constraints))
            bound = -math.inf if lp is None else lp.value
        lp_bound = bound
    best = _best(problem, objective, candidates)
    best_value = math.inf if best is None else float(evaluate(problem, best)[0][objective])
    used, proven = "colgen", False
    # The exact phase gets what column generation's share leaves, decided from the options and the
    # problem's size, never from the clock (so the same inputs take the same path). Building the
    # full model costs about 20 us per variable; skip the phase if that alone would overrun it.
    remaining = None if opts.time_limit is None else opts.time_limit - (cg_limit or 0.0)
    too_late = best is not None and remaining is not None and remaining < 2 * _build_seconds(problem)
    if (best is None or _gap(best_value, bound) > opts.relative_gap) and not too_late:
        remaining = None if remaining is None else max(0.1, remaining)
        run = _solve_cpsat if opts.backend == "cp-sat" else _solve_mip
        choice, solver_bound, solver_proven, scaling_error, repeats = run(
            problem, objective, constraints, budget, opts, remaining, best
        )
        reproducible = reproducible and repeats
        bound = max(bound, solver_bound)
        if choice is not None and _feasible(problem, constraints, budget, choice):
            value = float(evaluate(problem, choice)[0][objective])
            if value <= best_value:
                best, best_value, used, proven = choice, value, opts.backend, solver_proven
        elif choice is None and solver_proven and best is None:
            raise InfeasibleBudgetError(_infeasible(problem, constraints))
    else:
        scaling_error = 0.0
    if best is None:
        raise OptimizerError(f"no feasible plan found within the time limit of {opts.time_limit} s; raise --time-limit")
    losses, _ = evaluate(problem, best)
    bound = min(bound, best_value)
    gap = _gap(best_value, bound)
    return Solution(
        choice=best,
        objective=objective,
        objectives=tuple(float(v) for v in losses),
        bound=float(bound),
        gap=float(gap),
        status="optimal" if proven or gap <= opts.relative_gap else "feasible",
        backend=used,
        seconds=time.perf_counter() - start,
        lp_bound=lp_bound,
        scaling_error=scaling_error,
        reproducible=reproducible,
    )


def _build_seconds(problem: Problem) -> float:
    """Rough time to build the full CP-SAT / MIP model (measured: ~20 us per variable)."""
    return 0.3 + 2e-5 * problem.loss[0].size


def _gap(value: float, bound: float) -> float:
    if value <= 0:
        return 0.0
    return max(0.0, (value - bound) / value) if math.isfinite(bound) else 1.0


def _best(problem: Problem, objective: int, candidates: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64] | None:
    if not candidates:
        return None
    return min(candidates, key=lambda c: float(evaluate(problem, c)[0][objective]))


def _infeasible(problem: Problem, constraints: Constraints) -> str:
    text = infeasible_message(problem, constraints)
    if constraints.caps:
        text = "no plan meets the budget and the epsilon caps together (" + text.removeprefix("no plan ") + ")"
    return text


# Choice, proven bound, proven optimal, scaling error, reproducible (the same solve returns it again).
_Result = tuple[npt.NDArray[np.int64] | None, float, bool, float, bool]


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
    allowed: npt.NDArray[np.bool_] | None = None,
) -> _Result:
    L, H, R = problem.shape
    model = cp_model.CpModel()
    zero = model.new_constant(0)
    mask = np.ones((L, H, R), dtype=bool) if allowed is None else np.broadcast_to(allowed[:, None, :], (L, H, R))
    x = [model.new_bool_var("") if m else zero for m in mask.reshape(-1).tolist()]
    for head in range(L * H):
        model.add_exactly_one(
            [v for v, m in zip(x[head * R : (head + 1) * R], mask.reshape(L * H, R)[head], strict=True) if m]
        )
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
    layer_rules = [np.flatnonzero(mask[layer, 0]).tolist() for layer in range(L)]
    if k is not None and k < R:
        for layer in range(L):
            if len(layer_rules[layer]) <= k:
                continue
            y = {r: model.new_bool_var("") for r in layer_rules[layer]}
            model.add(sum(y.values()) <= k)
            for head in range(H):
                base = (layer * H + head) * R
                for r in layer_rules[layer]:
                    model.add_implication(x[base + r], y[r])
            if hint is not None:
                used = set(hint[layer].tolist())
                for r, var in y.items():
                    model.add_hint(var, r in used)
    model.minimize(cp_model.LinearExpr.weighted_sum(x, _scaled(losses[objective], scales[objective])))
    if hint is not None:
        for layer in range(L):
            for head in range(H):
                base = (layer * H + head) * R
                for r in layer_rules[layer]:
                    model.add_hint(x[base + r], r == hint[layer, head])
    solver = deterministic_solver(opts.threads, opts.seed, time_limit)
    solver.parameters.relative_gap_limit = opts.relative_gap
    status = solver.solve(model)
    repeats = reproducible(solver, status)
    scaling_error = 0.5 * L * H / scales[objective]
    if status == cp_model.INFEASIBLE:
        return None, -math.inf, True, scaling_error, repeats
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, -math.inf, False, scaling_error, repeats
    values = np.array([solver.boolean_value(v) for v in x], dtype=bool).reshape(L, H, R)
    if allowed is not None:
        # A restricted solve proves nothing about the full program.
        return values.argmax(axis=-1).astype(np.int64), -math.inf, False, float(scaling_error), repeats
    bound = solver.best_objective_bound / scales[objective] - scaling_error
    optimal = status == cp_model.OPTIMAL
    return values.argmax(axis=-1).astype(np.int64), float(bound), optimal, float(scaling_error), repeats


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
    if opts.backend == "scip":
        solver.SetNumThreads(max(1, opts.threads))
    if time_limit is not None:
        solver.SetTimeLimit(max(1, int(time_limit * 1000)))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, opts.relative_gap)
    status = solver.Solve(params)
    # SCIP and CBC only know wall-clock limits: a solve they do not prove may not reproduce.
    if status == pywraplp.Solver.INFEASIBLE:
        return None, -math.inf, True, 0.0, True
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None, -math.inf, False, 0.0, time_limit is None
    values = np.array([v.solution_value() for v in x]).reshape(L, H, R)
    optimal = status == pywraplp.Solver.OPTIMAL
    return values.argmax(axis=-1).astype(np.int64), float(obj.BestBound()), optimal, 0.0, optimal
