"""moa-kernels: Triton prefill and decode kernels for per-head sink + sliding-window attention, each beside a PyTorch reference."""

__version__ = "0.1.0"

__all__ = ["__version__"]
