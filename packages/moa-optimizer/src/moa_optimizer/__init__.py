"""moa-optimizer: rule grids, loss tables and OR-Tools integer programs that turn profiles into Pareto plans.

Importing it does nothing else (no registration, no I/O). The command ``moa optimize`` and the
built-in optimizer plugin are registered through entry points in pyproject.toml.
"""

from moa_optimizer._version import __version__
from moa_optimizer.builtin import budget_of, optimize, plan_from_solution, problem_for
from moa_optimizer.config import OptimizeConfig
from moa_optimizer.errors import InfeasibleBudgetError, OptimizerError
from moa_optimizer.grid import RuleGrid, default_alphas, default_betas, format_rule_table, make_grid
from moa_optimizer.ip import BACKENDS, Solution, SolverOptions, evaluate, solve
from moa_optimizer.model import Constraints, density_range
from moa_optimizer.pareto import pareto_filter, pareto_front
from moa_optimizer.plugins import available_optimizers, load_optimizer
from moa_optimizer.report import format_summary, plot_heatmap, plot_pareto, summary_table, write_outputs
from moa_optimizer.synthetic import synthetic_fingerprint, synthetic_profiles
from moa_optimizer.tables import COST_SCHEMA, LOSS_SCHEMA, Problem, cost_table, loss_table

__all__ = [
    "BACKENDS",
    "COST_SCHEMA",
    "LOSS_SCHEMA",
    "Constraints",
    "InfeasibleBudgetError",
    "OptimizeConfig",
    "OptimizerError",
    "Problem",
    "RuleGrid",
    "Solution",
    "SolverOptions",
    "__version__",
    "available_optimizers",
    "budget_of",
    "cost_table",
    "default_alphas",
    "default_betas",
    "density_range",
    "evaluate",
    "format_rule_table",
    "format_summary",
    "loss_table",
    "load_optimizer",
    "make_grid",
    "optimize",
    "pareto_filter",
    "pareto_front",
    "plan_from_solution",
    "plot_heatmap",
    "plot_pareto",
    "problem_for",
    "solve",
    "summary_table",
    "synthetic_fingerprint",
    "synthetic_profiles",
    "write_outputs",
]
