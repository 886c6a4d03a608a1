"""moa-optimizer: Rule grids, loss tables and OR-Tools integer programs that turn profiles into Pareto plans."""

__version__ = "0.1.0"

__all__ = ["__version__"]
