"""moa: The moa umbrella package: the whole pipeline, the demo and benchmarks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
