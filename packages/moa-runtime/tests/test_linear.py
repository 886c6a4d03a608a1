"""`left_operand_linears` against `F.linear` (the oracle) and against the unpatched model's logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moa_runtime import MoaRuntimeError, left_operand_linears
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


def test_a_model_decodes_alike() -> None:
    dense, routed = make_model("llama"), make_model("llama")
    assert left_operand_linears(routed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
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
