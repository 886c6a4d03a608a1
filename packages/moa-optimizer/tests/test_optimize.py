"""End-to-end optimizer behaviour on synthetic profiles: budgets, infeasibility, heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest

from moa_optimizer import (
    InfeasibleBudgetError,
    OptimizeConfig,
    budget_of,
    make_grid,
    optimize,
    pareto_filter,
    synthetic_fingerprint,
    synthetic_profiles,
)
from moa_plan import Plan, check_budget


def _loss(plan: Plan, profiles) -> float:
    """Total loss of a plan from the raw histograms (an independent tail sum per KV head group)."""
    total = 0.0
    group = plan.model.group_size
    for p in profiles:
        win = plan.windows(p.length)
        for layer in range(plan.num_layers):
            for hq in range(plan.model.num_attention_heads):
                total += float(p.hist[layer, hq, win[layer, hq // group] :].astype(np.float64).sum())
    return total


def test_every_plan_passes_the_checker_and_front_is_nondominated(small_profiles):
    config = OptimizeConfig(density=0.5, lower=0.4, time_limit=3, points=3)
    plans = optimize(list(small_profiles), config)
    assert len(plans) >= 2
    budget = budget_of(config, plans[0].provenance.constrained_lengths)
    assert budget.lengths == [512, 1024, 2048, 4096]
    objs = []
    for plan in plans:
        assert check_budget(plan, budget) == []
        assert plan.provenance.method == "moa"
        assert max(plan.rules_per_layer()) <= 2
        assert 0 <= plan.provenance.extra["gap"] <= 1
        objs.append([plan.provenance.objectives[f"loss@{n}"] for n in (512, 1024, 2048)])
        single = {p.length: p for p in small_profiles}
        for n in (512, 1024, 2048):
            assert plan.provenance.objectives[f"loss@{n}"] == pytest.approx(_loss(plan, [single[n]]), rel=1e-5)
    assert pareto_filter(objs) == list(range(len(objs)))


def test_infeasible_budget_names_smallest_density_per_length(small_profiles):
    with pytest.raises(InfeasibleBudgetError) as info:
        optimize(list(small_profiles), OptimizeConfig(density=0.05, lower=0.0, pareto=False))
    message = str(info.value)
    grid = make_grid([512, 1024, 2048, 4096], [512, 1024, 2048])
    for n in (512, 1024, 2048, 4096):
        smallest = grid.spans([n])[0].min() / n
        assert f"{smallest:.4f} at N={n}" in message
    assert "\n" not in message
    assert message.count(". ") == 0


def test_heterogeneous_heads_beat_the_best_uniform_plan():
    fp = synthetic_fingerprint(4, 8)
    profiles = synthetic_profiles(fp, [1024, 2048], seed=5, long_range_fraction=0.4)
    config = OptimizeConfig(density=0.5, lower=0.0, pareto=False, extend=None, max_rules_per_layer=None, time_limit=5)
    (plan,) = optimize(profiles, config)
    target = profiles[-1]
    best_uniform = np.inf
    # Every uniform plan the grid or StreamingLLM would offer at the same budget.
    grid = make_grid([1024, 2048], [1024, 2048])
    candidates = [Plan.uniform(fp, 0.5)] + [
        Plan.from_arrays(fp, np.full((4, 8), a), np.full((4, 8), b))
        for a, b in zip(grid.alphas, grid.betas, strict=True)
    ]
    for u in candidates:
        if all(u.density(n) <= 0.5 + 1e-9 for n in (1024, 2048)):
            best_uniform = min(best_uniform, _loss(u, [target]))
    assert np.isfinite(best_uniform)
    assert _loss(plan, [target]) < 0.9 * best_uniform


def test_time_limited_solve_keeps_a_feasible_plan_and_reports_its_gap():
    from moa_optimizer import Constraints, SolverOptions, problem_for, solve

    fp = synthetic_fingerprint(8, 16)
    profiles = synthetic_profiles(fp, [1024, 2048, 4096], seed=2, bucket=64)
    problem = problem_for(profiles, OptimizeConfig(density=0.4))
    start_limit = 0.3
    sol = solve(
        problem, 0, Constraints(upper=0.4, lower=0.36, max_rules_per_layer=2), SolverOptions(time_limit=start_limit)
    )
    assert sol.seconds < start_limit + 2.0
    assert 0.0 <= sol.gap < 1.0
    assert sol.bound <= sol.value
    assert (sol.status == "optimal") == (sol.gap <= 1e-6)
    n = np.asarray(problem.constrained)
    dens = problem.grid.spans(problem.constrained)[:, sol.choice].sum(axis=(1, 2)) / (n * 8 * 16)
    assert (dens <= 0.4 + 1e-9).all()
    assert (dens >= 0.36 - 1e-9).all()
