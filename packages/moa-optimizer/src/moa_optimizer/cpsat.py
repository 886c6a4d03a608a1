"""CP-SAT solvers that give the same answer for the same inputs, whatever the machine's load.

CP-SAT's parallel portfolio races its workers, and a wall-clock time limit stops it at a point
that depends on the load: two runs of the same command returned plans of the same loss 14 heads
apart on SmolLM2 (a one-length program full of ties). One worker under a limit in CP-SAT's
*deterministic* seconds (work units, about one second each on a quiet machine) searches the same
way every time. More workers are faster on large programs but not reproducible (CP-SAT's
deterministic parallel mode, ``interleave_search``, aborted on a 6-head test program in OR-Tools
9.15, so it is not used). A wall-clock guard of `WALL_GUARD` times the limit only stops a runaway
solve; `reproducible` says whether a solve's answer can be trusted to repeat.
"""

from __future__ import annotations

from ortools.sat.python import cp_model

__all__ = ["WALL_GUARD", "deterministic_solver", "reproducible"]

WALL_GUARD = 10.0


def deterministic_solver(threads: int, seed: int, time_limit: float | None) -> cp_model.CpSolver:
    """A CP-SAT solver with a fixed seed and a deterministic time limit (reproducible with one thread)."""
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = max(1, threads)
    solver.parameters.random_seed = seed
    # Set-inclusion presolve takes seconds on ~50k literals and can eat the whole time limit.
    solver.parameters.presolve_inclusion_work_limit = 0
    if time_limit is not None:
        solver.parameters.max_deterministic_time = max(0.05, float(time_limit))
        solver.parameters.max_time_in_seconds = WALL_GUARD * max(0.05, float(time_limit)) + 1.0
    return solver


def reproducible(solver: cp_model.CpSolver, status: cp_model.CpSolverStatus) -> bool:
    """Whether the same solve would return the same answer: one worker, not stopped by the wall clock."""
    if solver.parameters.num_workers > 1:
        return status == cp_model.INFEASIBLE
    if status in (cp_model.OPTIMAL, cp_model.INFEASIBLE, cp_model.MODEL_INVALID):
        return True
    stopped_by_guard = solver.wall_time >= 0.98 * solver.parameters.max_time_in_seconds
    return not stopped_by_guard
