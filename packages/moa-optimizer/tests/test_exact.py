"""The integer program's optimum equals brute-force enumeration on small random instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moa_optimizer import (
    Constraints,
    InfeasibleBudgetError,
    Problem,
    RuleGrid,
    SolverOptions,
    make_grid,
    solve,
    synthetic_fingerprint,
)

L, H, R = 3, 2, 6
LENGTHS = (1024, 2048, 4096)


def _instance(seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    full = make_grid(LENGTHS, LENGTHS[:2])
    pick = np.sort(rng.choice(len(full), R, replace=False))
    grid = RuleGrid(alphas=full.alphas[pick], betas=full.betas[pick])
    spans = np.broadcast_to(grid.spans(LENGTHS)[:, None, None, :], (len(LENGTHS), L, H, R)).copy()
    # Random losses that shrink with the span, as real ones do, plus noise so heads differ.
    base = rng.exponential(1.0, (2, L, H, 1)) / (1 + spans[:2] / 512.0) ** rng.uniform(0.5, 2, (2, L, H, 1))
    loss = base * rng.uniform(0.5, 1.5, (2, L, H, R))
    return Problem(
        model=synthetic_fingerprint(L, H),
        grid=grid,
        profiled=LENGTHS[:2],
        constrained=LENGTHS,
        loss=loss,
        spans=spans,
    )


def _brute(problem: Problem, objective: int, c: Constraints) -> float:
    combos = np.array(list(itertools.product(range(R), repeat=L * H))).reshape(-1, L, H)
    heads = np.arange(L * H)
    flat = combos.reshape(len(combos), -1)
    loss = problem.loss.reshape(2, L * H, R)[:, heads, flat].sum(-1)  # [2, M]
    spans = problem.spans.reshape(len(LENGTHS), L * H, R)[:, heads, flat].sum(-1)  # [C, M]
    n = np.asarray(LENGTHS)[:, None] * L * H
    ok = ((spans / n <= c.upper + 1e-9) & (spans / n >= c.lower - 1e-9)).all(0)
    for q, cap in c.caps.items():
        ok &= loss[q] <= cap
    if c.max_rules_per_layer is not None:
        distinct = np.array([[len(set(row)) for row in combo] for combo in combos])
        ok &= (distinct <= c.max_rules_per_layer).all(1)
    return float(loss[objective][ok].min()) if ok.any() else np.inf


CASES = [(seed, k) for seed in range(4) for k in (None, 1)]


@pytest.mark.parametrize("backend", ["cp-sat", "scip"])
@pytest.mark.parametrize(("seed", "k"), CASES, ids=[f"seed{s}-K{k}" for s, k in CASES])
def test_solver_matches_brute_force(backend, seed, k):
    problem = _instance(seed)
    rng = np.random.default_rng(100 + seed)
    mid = problem.spans[:, 0, 0, :].mean(-1) / np.asarray(LENGTHS)
    upper = float(np.clip(mid.max() + rng.uniform(-0.05, 0.05), 0.05, 1.0))
    c = Constraints(upper=upper, lower=max(0.0, upper - 0.25), max_rules_per_layer=k)
    objective = seed % 2
    expected = _brute(problem, objective, c)
    for use_lp in (True, False):
        opts = SolverOptions(backend=backend, time_limit=20, use_lp=use_lp)
        if not np.isfinite(expected):
            with pytest.raises(InfeasibleBudgetError):
                solve(problem, objective, c, opts)
            continue
        sol = solve(problem, objective, c, opts)
        assert sol.status == "optimal"
        assert sol.value == pytest.approx(expected, rel=1e-9, abs=2 * sol.scaling_error + 1e-12)
        assert sol.bound <= sol.value + 1e-12


@pytest.mark.parametrize("backend", ["cp-sat", "cbc"])
def test_epsilon_cap_matches_brute_force(backend):
    problem = _instance(7)
    upper = float((problem.spans[:, 0, 0, :].mean(-1) / np.asarray(LENGTHS)).max())
    c = Constraints(upper=upper, lower=upper - 0.25, max_rules_per_layer=1)
    free = _brute(problem, 0, c)
    assert np.isfinite(free)
    # Cap objective 0 halfway between its own optimum and its value at objective 1's optimum.
    other = solve(problem, 1, c, SolverOptions(backend=backend)).objectives[0]
    cap = (free + other) / 2
    capped = Constraints(upper=upper, lower=upper - 0.25, max_rules_per_layer=1, caps={0: cap})
    expected = _brute(problem, 1, capped)
    sol = solve(problem, 1, capped, SolverOptions(backend=backend))
    assert sol.value == pytest.approx(expected, rel=1e-9, abs=2 * sol.scaling_error + 1e-12)
    assert sol.objectives[0] <= cap + 1e-9
