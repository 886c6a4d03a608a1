"""Decode's weight products in the layout a CPU GEMM streams fastest: an opt-in that speeds every method alike.

A decode step multiplies a few rows (one per sequence of the batch) by every weight matrix of the model.
`torch.nn.functional.linear` computes ``x @ W.T``. On the CPU of BENCHMARKS.md that product with 8 rows reads the
weights at about 40% of memory speed, while the same product with the weight as the left operand,
``(W @ x.T).T``, is 1.4x faster (`tools/decode_attention_micro.py --matmuls`). `left_operand_linears` routes every
`torch.nn.Linear` of a model through that layout when its input has at most ``max_rows`` rows (decode) and through
`F.linear` otherwise (prefill). The result is the same product up to float rounding.

`packed_linears` goes further where torch has oneDNN (the CPU build used here does): it keeps a copy of each fp32
weight in oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the op that inductor's CPU freezing
passes insert, `torch/_inductor/fx_passes/mkldnn_fusion.py`) and runs every product, decode and prefill, through
`torch.ops.mkldnn._linear_pointwise`. On the AMD EPYC of BENCHMARKS.md one decode step's weight products at 8 rows
take 48 ms packed against 79 ms with `F.linear` (`tools/decode_attention_micro.py --plan ... --matmuls`). The copy costs the weights'
bytes once more (the tied embedding included), and it is repacked if the weight is changed in place.

Both touch no attention and no cache, so they speed a dense model as much as a planned one: a benchmark applies one
to every method or to none (`moa bench e2e --linear left|packed`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from moa_runtime.errors import MoaRuntimeError

__all__ = ["left_operand_linears", "packed_linears", "packed_linears_available"]


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


def packed_linears_available() -> bool:
    """True when this torch build has oneDNN's packed linear."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


def packed_linears(model: torch.nn.Module, *, rows_hint: int = 8) -> int:
    """Run each fp32 CPU `torch.nn.Linear` of ``model`` through a oneDNN-packed copy of its weight.

    Without gradients (``torch.no_grad``, ``torch.inference_mode``, `generate`) every product goes through
    ``torch.ops.mkldnn._linear_pointwise`` on the packed weight; when autograd needs the product, or the input is of
    another dtype or device, through `F.linear` as before. A weight changed in place since it was packed (its
    version counter moved) is packed again before its next product. Applying it twice changes nothing.

    Args:
        rows_hint: the number of input rows oneDNN picks the packed layout for (decode's batch); any number runs.

    Returns:
        The number of linear layers routed (other dtypes and devices are left alone).

    Raises:
        MoaRuntimeError: this torch has no oneDNN, or ``rows_hint`` is below 1.
    """
    if rows_hint < 1:
        raise MoaRuntimeError(f"rows_hint must be at least 1, got {rows_hint}.")
    if not packed_linears_available():
        raise MoaRuntimeError(
            "this torch build has no oneDNN (mkldnn) packed linear, so packed linears cannot run here."
        )
    count = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            continue
        module.forward = functools.partial(_packed_forward, module, _Packed(rows_hint))  # type: ignore[method-assign]
        count += 1
    return count


class _Packed:
    """One linear's packed weight and the weight version it was packed from."""

    def __init__(self, rows_hint: int) -> None:
        self.rows_hint = rows_hint
        self.weight: torch.Tensor | None = None
        self.source: tuple[int, int] = (-1, -1)

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        source = (weight.data_ptr(), weight._version)
        if self.weight is None or source != self.source:
            with torch.no_grad():
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.rows_hint)
            self.source = source
        return self.weight


def _packed_forward(module: torch.nn.Linear, packed: _Packed, x: torch.Tensor) -> torch.Tensor:
    weight = module.weight
    autograd = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if (
        autograd
        or x.dtype != weight.dtype
        or x.device != weight.device
        or weight.dtype != torch.float32
        or x.numel() == 0
    ):
        return F.linear(x, weight, module.bias)
    bias = None if module.bias is None else module.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, packed.get(weight), bias, "none", [], "")
