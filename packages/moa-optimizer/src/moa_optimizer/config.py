"""`OptimizeConfig`: everything an optimizer needs besides the profiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["OptimizeConfig"]


@dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """Budget and search settings shared by every optimizer plugin.

    Attributes:
        density: Upper bound on the mean KV density at every constrained length.
        lower: Lower bound (None: 0.9 x density, as in the original MoA).
        lengths: Extra constrained lengths (the profiled lengths are always constrained).
        extend: Also constrain ``extend x`` the longest profiled length (None: no).
        max_rules_per_layer: At most this many distinct rules per layer (None: no limit).
        time_limit: Seconds per integer-program solve (None: until optimal).
        backend: ``cp-sat`` or a MIP solver (``scip`` or ``cbc``).
        threads: CP-SAT workers (1: the same inputs give the same plan; more: faster on large
            programs, not reproducible).
        pareto: Search the Pareto front over the profiled lengths (False: one solve).
        objective_length: The profiled length minimised by a single solve, and the primary
            objective of the Pareto search (None: the longest).
        points: Epsilon grid points per other objective.
        alphas: Rule-grid alphas (None: the default grid).
        betas: Rule-grid betas (None: 0, 1/8, ..., 1).
        grid_resolution: Divide the default grid's alpha and beta steps by this (1: the original's).
        seed: Solver seed.
        relative_gap: Stop a solve once its proven relative gap is at most this (0.1 % by default;
            the gap actually reached is recorded in every plan).
    """

    density: float
    lower: float | None = None
    lengths: Sequence[int] = ()
    extend: float | None = 2.0
    max_rules_per_layer: int | None = 2
    time_limit: float | None = 10.0
    backend: str = "cp-sat"
    threads: int = 1
    pareto: bool = True
    objective_length: int | None = None
    points: int = 5
    alphas: Sequence[float] | None = None
    betas: Sequence[float] | None = None
    grid_resolution: int = 1
    seed: int = 0
    relative_gap: float = 1e-3

    @property
    def lower_bound(self) -> float:
        """The effective lower density bound."""
        return 0.9 * self.density if self.lower is None else self.lower

    def constrained_lengths(self, profiled: Sequence[int]) -> list[int]:
        """Sorted distinct constrained lengths: profiled, ``lengths`` and the extended one."""
        out = {int(n) for n in profiled} | {int(n) for n in self.lengths}
        if self.extend is not None:
            out.add(round(self.extend * max(profiled)))
        return sorted(out)
