"""`left_operand_linears` and `packed_linears` against `F.linear` (the oracle) and the unpatched model's logits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from moa_runtime import MoaRuntimeError, left_operand_linears, packed_linears, packed_linears_available
from moa_runtime.testing import make_model


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 12), (8, 12), (2, 3, 12), (4, 1, 12), (40, 12), (0, 12)])
def test_same_product_as_f_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 7, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, layer.weight, layer.bias)
    assert left_operand_linears(layer, max_rows=32) == 1
    got = layer(x)
    assert got.shape == expected.shape
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_small_inputs_take_the_left_operand_and_large_ones_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = torch.nn.Linear(6, 5)
    left_operand_linears(layer, max_rows=4)
    calls: list[int] = []
    real_mm = torch.mm

    def counting_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(b.shape[1])
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", counting_mm)
    layer(torch.randn(2, 2, 6))  # 4 rows: left operand
    layer(torch.randn(5, 6))  # 5 rows: F.linear
    assert calls == [4]


def test_gradients_match() -> None:
    torch.manual_seed(1)
    a, b = torch.nn.Linear(9, 4), torch.nn.Linear(9, 4)
    b.load_state_dict(a.state_dict())
    left_operand_linears(b)
    x = torch.randn(3, 9)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.bias.grad, a.bias.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "route",
    [
        left_operand_linears,
        pytest.param(packed_linears, marks=pytest.mark.skipif(not packed_linears_available(), reason="no oneDNN")),
    ],
)
def test_a_model_decodes_alike(route: Callable[[torch.nn.Module], int]) -> None:
    dense, routed = make_model("llama"), make_model("llama")
    assert route(routed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    ids = torch.randint(3, 96, (3, 20), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        want, got = dense.generate(ids, **kwargs), routed.generate(ids, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_bad_max_rows() -> None:
    with pytest.raises(MoaRuntimeError, match="max_rows must be at least 1"):
        left_operand_linears(torch.nn.Linear(2, 2), max_rows=0)


needs_onednn = pytest.mark.skipif(not packed_linears_available(), reason="this torch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 12), (8, 12), (2, 3, 12), (300, 12), (0, 12)])
def test_packed_same_product_as_f_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 7, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, layer.weight, layer.bias)
    assert packed_linears(layer) == 1
    with torch.no_grad():
        got = layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_packed_runs_onednn_without_grad_and_f_linear_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = torch.nn.Linear(6, 5)
    packed_linears(layer)
    calls: list[str] = []
    real = F.linear

    def counting_linear(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("F.linear")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "linear", counting_linear)
    with torch.inference_mode():
        layer(torch.randn(3, 6))
    assert calls == []
    x = torch.randn(3, 6)
    layer(x).sum().backward()  # autograd needs the product: F.linear, and gradients as F.linear's
    assert calls == ["F.linear"]
    assert layer.weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, torch.ones(5, 1) * x.sum(0, keepdim=True))


@needs_onednn
def test_packed_follows_a_weight_changed_in_place() -> None:
    torch.manual_seed(2)
    layer = torch.nn.Linear(10, 4)
    packed_linears(layer)
    x = torch.randn(2, 10)
    with torch.no_grad():
        layer(x)  # packs
        layer.weight.mul_(-3.0)
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


@needs_onednn
def test_packed_leaves_other_dtypes_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).to(torch.float64))
    assert packed_linears(model) == 1
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model[1](x), F.linear(x, model[1].weight, model[1].bias))


def test_packed_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MoaRuntimeError, match="rows_hint must be at least 1"):
        packed_linears(torch.nn.Linear(2, 2), rows_hint=0)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(MoaRuntimeError, match="no oneDNN"):
        packed_linears(torch.nn.Linear(2, 2))
