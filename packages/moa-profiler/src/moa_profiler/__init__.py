"""moa-profiler: Model-aligned calibration sets and gradient attention-influence profiles."""

__version__ = "0.1.0"

__all__ = ["__version__"]
