"""Decode's weight products in the layout a CPU GEMM streams fastest: an opt-in that speeds every method alike.

A decode step multiplies a few rows (one per sequence of the batch) by every weight matrix of the model.
`torch.nn.functional.linear` computes ``x @ W.T``. On the CPU of BENCHMARKS.md that product with 8 rows reads the
weights at about 40% of memory speed, while the same product with the weight as the left operand,
``(W @ x.T).T``, is 1.4x faster (`tools/decode_attention_micro.py --matmuls`). `left_operand_linears` routes every
`torch.nn.Linear` of a model through that layout when its input has at most ``max_rows`` rows (decode) and through
`F.linear` otherwise (prefill). The result is the same product up to float rounding.

It touches no attention and no cache, so it speeds a dense model as much as a planned one: a benchmark applies it
to every method or to none (`moa bench e2e --linear left`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from moa_runtime.errors import MoaRuntimeError

__all__ = ["left_operand_linears"]


def left_operand_linears(model: torch.nn.Module, *, max_rows: int = 32) -> int:
    """Route each `torch.nn.Linear` of ``model`` through ``(W @ x.T).T`` for inputs of at most ``max_rows`` rows.

    Rows are the input's elements over its last dimension (batch x tokens). Inputs with more rows, or of another
    dtype than the weight, go through `F.linear` as before. Applying it twice changes nothing.

    Returns:
        The number of linear layers routed.

    Raises:
        MoaRuntimeError: ``max_rows`` below 1.
    """
    if max_rows < 1:
        raise MoaRuntimeError(f"max_rows must be at least 1, got {max_rows}.")
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = functools.partial(_left_operand_forward, module, max_rows)  # type: ignore[method-assign]
            count += 1
    return count


def _left_operand_forward(module: torch.nn.Linear, max_rows: int, x: torch.Tensor) -> torch.Tensor:
    features = x.shape[-1] if x.dim() else 0
    rows = x.numel() // features if features else 0
    if rows == 0 or rows > max_rows or x.dtype != module.weight.dtype:
        return F.linear(x, module.weight, module.bias)
    y = torch.mm(module.weight, x.reshape(rows, features).t()).t().contiguous()
    if module.bias is not None:
        y = y + module.bias
    return y.reshape(*x.shape[:-1], module.out_features)
