"""Input validation shared by the ops (one clear sentence per problem)."""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

__all__ = [
    "KernelInputError",
    "check_out_buffer",
    "check_implementation",
    "default_scale",
    "compute_dtype",
    "use_triton",
]

_IMPLEMENTATIONS = ("auto", "reference", "triton")


class KernelInputError(ValueError):
    """Raised when an op gets tensors of the wrong shape, dtype or device."""


def default_scale(head_dim: int, scale: float | None) -> float:
    """Softmax scale: ``scale`` when given, else ``1 / sqrt(head_dim)``."""
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the references: fp64 stays fp64, everything else runs in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_implementation(implementation: str) -> None:
    """Reject an unknown ``implementation`` name."""
    if implementation not in _IMPLEMENTATIONS:
        raise KernelInputError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}.")


@functools.cache
def triton_available() -> bool:
    """Whether triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(q: torch.Tensor, implementation: str) -> bool:
    """Resolve ``implementation`` to True (Triton kernel) or False (PyTorch reference)."""
    check_implementation(implementation)
    if implementation == "reference":
        return False
    if implementation == "triton":
        if not triton_available():
            raise KernelInputError("implementation='triton' was requested but triton is not installed.")
        return True
    return q.is_cuda and triton_available()


def check_out_buffer(
    buf: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, name: str
) -> torch.Tensor:
    """A contiguous output buffer: ``buf`` after checking it, or a new empty one."""
    if buf is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device or not buf.is_contiguous():
        raise KernelInputError(f"{name} must be a contiguous {dtype} tensor of shape {tuple(shape)} on {device}.")
    return buf
