"""Multi-objective search: one objective per profiled length, epsilon-constraint, Pareto filter.

1. Anchor solves: minimise each objective alone (each warm-started from the previous plan).
2. For the primary objective p, a grid of caps over each other objective q's range (from the
   anchors) gives constrained solves ``min f_p s.t. f_q <= cap_q``.
3. Duplicated choices are removed, then every point weakly dominated by another with one
   strict improvement is dropped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from moa_optimizer.errors import InfeasibleBudgetError, OptimizerError
from moa_optimizer.ip import Solution, SolverOptions, solve
from moa_optimizer.model import Constraints
from moa_optimizer.tables import Problem

__all__ = ["pareto_filter", "pareto_front"]

log = logging.getLogger(__name__)


def pareto_filter(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (<= everywhere, < somewhere), in input order.

    Exact duplicates both survive; callers dedupe first.
    """
    arr = np.asarray(points, dtype=np.float64)
    keep = []
    for i in range(len(arr)):
        dominated = ((arr <= arr[i]).all(axis=1) & (arr < arr[i]).any(axis=1)).any()
        if not dominated:
            keep.append(i)
    return keep


def pareto_front(
    problem: Problem,
    constraints: Constraints,
    options: SolverOptions | None = None,
    *,
    primary: int | None = None,
    points: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> list[Solution]:
    """Pareto-optimal solutions over the profiled lengths' losses.

    Args:
        problem: Dense loss and span arrays.
        constraints: Budget and rule limit (its caps are ignored).
        options: Solver options (time limit per solve).
        primary: Objective minimised in the constrained solves (default: the longest profiled length).
        points: Intervals per other objective's range: its cap takes the ``points - 1`` interior
            values ``min + (max - min) * j / points``, so ``(points - 1) ** (P - 1)`` solves
            besides the P anchors.
        progress: Called with (done, total) after each solve.

    Returns:
        Non-dominated, distinct solutions, sorted by the primary objective.

    Raises:
        InfeasibleBudgetError: if the budget admits no plan.
    """
    opts = options or SolverOptions()
    P = len(problem.profiled)
    p = P - 1 if primary is None else primary
    base = replace(constraints, caps={})
    others = [q for q in range(P) if q != p]
    grid = [] if P == 1 else list(itertools.product(range(1, max(points, 2)), repeat=len(others)))
    total = P + len(grid)
    found: list[Solution] = []
    hint = None
    order = [p, *others]
    for done, q in enumerate(order, start=1):
        sol = solve(problem, q, base, opts, hint=hint)
        found.append(sol)
        hint = sol.choice
        if progress:
            progress(done, total)
    anchors = np.array([s.objectives for s in found])
    lo, hi = anchors.min(axis=0), anchors.max(axis=0)
    for i, cell in enumerate(grid, start=P + 1):
        caps = {q: float(lo[q] + (hi[q] - lo[q]) * j / max(points, 2)) for q, j in zip(others, cell, strict=True)}
        # Warm start from the anchor of the primary objective repaired to the caps by the solver.
        try:
            sol = solve(problem, p, replace(base, caps=caps), opts, hint=_closest(found, caps, p))
            found.append(sol)
            log.debug("caps %s: %s gap %.2e in %.2fs (%s)", caps, sol.status, sol.gap, sol.seconds, sol.backend)
        except InfeasibleBudgetError:
            log.debug("epsilon point %s is infeasible", caps)
        except OptimizerError as exc:
            log.info("epsilon point %s: %s", caps, exc)
        if progress:
            progress(i, total)
    unique: dict[bytes, Solution] = {}
    for s in found:
        key = s.choice.tobytes()
        if key not in unique or s.gap < unique[key].gap:
            unique[key] = s
    distinct = list(unique.values())
    keep = pareto_filter([s.objectives for s in distinct])
    return sorted((distinct[i] for i in keep), key=lambda s: s.objectives[p])


def _closest(found: Sequence[Solution], caps: dict[int, float], p: int) -> np.ndarray | None:
    """The found solution that meets the caps with the lowest primary loss, else None."""
    ok = [s for s in found if all(s.objectives[q] <= cap for q, cap in caps.items())]
    return min(ok, key=lambda s: s.objectives[p]).choice if ok else None
