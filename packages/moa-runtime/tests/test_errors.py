"""Bad plans and bad use fail early with one sentence."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from moa_plan import ModelFingerprint, Plan, PlanError
from moa_runtime import MoACache, MoaRuntimeError, apply_plan
from moa_runtime.testing import make_model


@pytest.mark.parametrize(
    ("field", "other"),
    [("num_layers", {"layers": 3}), ("num_key_value_heads", {"kv_heads": 4}), ("architecture", {"arch": "qwen2"})],
)
def test_plan_for_another_model_fails_before_compute(field: str, other: dict) -> None:
    model = make_model("llama", kv_heads=2)
    arch = other.pop("arch", "llama")
    plan = Plan.dense(ModelFingerprint.from_config(make_model(arch, **{"kv_heads": 2, **other}).config))
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(PlanError) as info:
        apply_plan(model, plan)
    message = str(info.value)
    assert field in message
    assert "\n" not in message
    assert message.count(". ") == 0
    with pytest.raises(PlanError, match=field):
        MoACache(plan, model.config, max_length=10)
    assert calls == []
    assert model.config._attn_implementation != "moa"


def test_bad_arguments() -> None:
    model = make_model("llama")
    plan = Plan.dense(ModelFingerprint.from_config(model.config))
    with pytest.raises(MoaRuntimeError, match="implementation"):
        apply_plan(model, plan, implementation="fast")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(MoaRuntimeError, match="CUDA"):
            apply_plan(model, plan, implementation="triton")
    with pytest.raises(MoaRuntimeError, match="max_length"):
        MoACache(plan, model.config, max_length=0)
    apply_plan(model, plan)
    cache = MoACache(plan, model.config, max_length=8)
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]]), cache=cache)
    with pytest.raises(MoaRuntimeError, match="cropped"):
        cache.crop(-1)
    with pytest.raises(MoaRuntimeError, match="4-D"):
        model(torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 1, 2, 2, dtype=torch.bool), use_cache=False)


def test_import_registers_nothing() -> None:
    code = (
        "import moa_runtime, moa_runtime.cli\n"
        "from transformers import AttentionInterface\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "assert 'moa' not in AttentionInterface._global_mapping\n"
        "assert 'moa' not in AttentionMaskInterface._global_mapping\n"
        "moa_runtime.register()\n"
        "assert 'moa' in AttentionInterface._global_mapping\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
