"""The built-in optimizer (entry point ``builtin`` of ``moa.optimizers``).

The plugin protocol is one callable, ``optimize(profiles: list[Profile], config: OptimizeConfig)
-> list[Plan]``: plans in the order they should be tried, each passing `moa_plan.check_budget`
for the config's budget. It does no I/O.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence

import numpy as np

from moa_optimizer._version import __version__
from moa_optimizer.config import OptimizeConfig
from moa_optimizer.errors import OptimizerError
from moa_optimizer.grid import make_grid
from moa_optimizer.ip import Solution, SolverOptions, solve
from moa_optimizer.model import Constraints
from moa_optimizer.pareto import pareto_front
from moa_optimizer.tables import Problem, check_profiles
from moa_plan import Budget, Plan, Profile, Provenance, check_budget

__all__ = ["budget_of", "optimize", "plan_from_solution", "problem_for"]

log = logging.getLogger(__name__)


def problem_for(profiles: Sequence[Profile], config: OptimizeConfig) -> Problem:
    """Rule grid, loss and cost tables, and the dense problem for ``profiles`` under ``config``."""
    _check_config(config)
    check_profiles(profiles)
    ordered = sorted(profiles, key=lambda p: p.length)
    profiled = [p.length for p in ordered]
    constrained = config.constrained_lengths(profiled)
    grid = make_grid(
        constrained,
        profiled,
        alphas=config.alphas,
        betas=config.betas,
        sink=ordered[0].sink,
        block=ordered[0].block,
        resolution=config.grid_resolution,
    )
    return Problem.from_profiles(ordered, grid, constrained)


def budget_of(config: OptimizeConfig, constrained: Sequence[int]) -> Budget:
    """The `moa_plan.Budget` every returned plan must pass."""
    return Budget(
        lengths=list(constrained),
        upper=config.density,
        lower=config.lower_bound,
        max_rules_per_layer=config.max_rules_per_layer,
    )


def optimize(
    profiles: list[Profile], config: OptimizeConfig, *, progress: Callable[[int, int], None] | None = None
) -> list[Plan]:
    """Plans for ``profiles`` under ``config``: the Pareto front (or one plan), best primary loss first.

    Raises:
        OptimizerError: bad profiles or config; InfeasibleBudgetError if no plan meets the budget.
    """
    problem = problem_for(profiles, config)
    constraints = Constraints(
        upper=config.density, lower=config.lower_bound, max_rules_per_layer=config.max_rules_per_layer
    )
    options = SolverOptions(
        backend=config.backend,
        time_limit=config.time_limit,
        threads=config.threads,
        seed=config.seed,
        relative_gap=config.relative_gap,
    )
    primary = _primary(problem, config)
    if config.pareto and len(problem.profiled) > 1:
        solutions = pareto_front(
            problem, constraints, options, primary=primary, points=config.points, progress=progress
        )
    else:
        solutions = [solve(problem, primary, constraints, options)]
        if progress:
            progress(1, 1)
    budget = budget_of(config, problem.constrained)
    plans = []
    for index, sol in enumerate(solutions):
        plan = plan_from_solution(problem, sol, config, index=index)
        problems = check_budget(plan, budget)
        if problems:
            raise OptimizerError(f"internal error: plan {index} fails the budget check: {problems[0]}")
        plans.append(plan)
    return plans


def plan_from_solution(problem: Problem, sol: Solution, config: OptimizeConfig, *, index: int = 0) -> Plan:
    """A `moa_plan.Plan` with full provenance from a solved program."""
    alphas = problem.grid.alphas[sol.choice]
    betas = problem.grid.betas[sol.choice]
    prov = Provenance(
        creator="moa-optimizer",
        creator_version=__version__,
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        method="moa",
        budgets={"upper": config.density, "lower": config.lower_bound},
        profiled_lengths=list(problem.profiled),
        constrained_lengths=list(problem.constrained),
        objectives={f"loss@{n}": v for n, v in zip(problem.profiled, sol.objectives, strict=True)},
        notes=f"pareto point {index}: minimised loss@{problem.profiled[sol.objective]}",
        extra={
            "objective_length": problem.profiled[sol.objective],
            "bound": sol.bound,
            "gap": sol.gap,
            "status": sol.status,
            "backend": sol.backend,
            "seconds": round(sol.seconds, 3),
            "scaling_error": sol.scaling_error,
            "reproducible": sol.reproducible,
            "threads": config.threads,
            "seed": config.seed,
            "max_rules_per_layer": config.max_rules_per_layer,
            "num_rules": len(problem.grid),
            "time_limit": config.time_limit,
        },
    )
    return Plan.from_arrays(
        problem.model,
        np.asarray(alphas, dtype=np.float64),
        np.asarray(betas, dtype=np.float64),
        sink=problem.grid.sink,
        block=problem.grid.block,
        provenance=prov,
    )


def _primary(problem: Problem, config: OptimizeConfig) -> int:
    if config.objective_length is None:
        return len(problem.profiled) - 1
    if config.objective_length not in problem.profiled:
        raise OptimizerError(
            f"objective length {config.objective_length} is not a profiled length ({', '.join(map(str, problem.profiled))})"
        )
    return problem.profiled.index(config.objective_length)


def _check_config(config: OptimizeConfig) -> None:
    if not 0.0 < config.density <= 1.0:
        raise OptimizerError(f"density must be in (0, 1], got {config.density}")
    if not 0.0 <= config.lower_bound <= config.density:
        raise OptimizerError(f"lower density bound must be in [0, density={config.density}], got {config.lower_bound}")
    if config.max_rules_per_layer is not None and config.max_rules_per_layer < 1:
        raise OptimizerError(f"max rules per layer must be >= 1, got {config.max_rules_per_layer}")
    if config.time_limit is not None and config.time_limit <= 0:
        raise OptimizerError(f"time limit must be positive seconds, got {config.time_limit}")
    if config.extend is not None and config.extend < 1:
        raise OptimizerError(f"extend factor must be >= 1, got {config.extend}")
