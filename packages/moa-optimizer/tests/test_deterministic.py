"""The same inputs give the same plan: CP-SAT searches deterministically under deterministic limits.

The program below has many plans of exactly equal loss (the loss depends only on the span at the
one profiled length, and a third of the heads cost nothing), the case where a racing parallel
portfolio under a wall-clock limit returned plans 14 heads apart on SmolLM2. Each solve is cut
short by its time limit before a proof, so the plan depends on where the search stopped: with a
wall-clock limit that moves with the machine's load; with a deterministic one it must not.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from moa_optimizer import Constraints, Problem, SolverOptions, make_grid, solve, synthetic_fingerprint


def _tied_problem() -> Problem:
    layers, heads = 30, 3
    profiled, constrained = (1024,), (1024, 8192)
    grid = make_grid(constrained, profiled)
    spans = grid.spans(constrained)[:, None, None, :]
    spans = np.broadcast_to(spans, (2, layers, heads, len(grid))).copy()
    rng = np.random.default_rng(0)
    need = rng.exponential(1.0, (1, layers, heads, 1)) * (rng.random((1, layers, heads, 1)) > 0.33)
    loss = need * np.clip(1 - spans[:1] / 1024.0, 0, 1) ** 2
    return Problem(
        model=synthetic_fingerprint(layers, heads),
        grid=grid,
        profiled=profiled,
        constrained=constrained,
        loss=loss,
        spans=spans,
    )


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("use_lp", [False, True])
def test_the_same_plan_on_a_quiet_and_on_a_busy_machine(use_lp):
    problem = _tied_problem()
    constraints = Constraints(upper=0.25, lower=0.225, max_rules_per_layer=2)
    options = SolverOptions(threads=1, time_limit=1.0, relative_gap=0.0, use_lp=use_lp)
    first = solve(problem, 0, constraints, options)
    assert first.reproducible
    # A process spinning beside the solve takes CPU from it: a wall-clock limit
    # would stop the search earlier in its path, a deterministic one at the same point.
    spinners = [multiprocessing.get_context("spawn").Process(target=_spin, args=(8.0,)) for _ in range(1)]
    for p in spinners:
        p.start()
    try:
        busy = solve(problem, 0, constraints, options)
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    assert busy.reproducible
    np.testing.assert_array_equal(busy.choice, first.choice)
    assert busy.objectives == first.objectives


def test_several_workers_are_reported_as_not_reproducible():
    problem = _tied_problem()
    constraints = Constraints(upper=0.25, lower=0.225, max_rules_per_layer=2)
    sol = solve(problem, 0, constraints, SolverOptions(threads=2, time_limit=1.0, relative_gap=0.0, use_lp=False))
    assert not sol.reproducible
