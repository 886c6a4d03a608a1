"""A dense plan (every span >= N) reproduces transformers' own SDPA attention."""

from __future__ import annotations

import pytest
import torch

from moa_plan import ModelFingerprint, Plan
from moa_runtime import MoACache, apply_plan, remove_plan
from moa_runtime.testing import ARCHITECTURES, make_model, step_logits

STEPS = 32


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dense_plan_matches_sdpa(arch: str, kv_heads: int, greedy: dict) -> None:
    model = make_model(arch, kv_heads=kv_heads)
    model.set_attn_implementation("sdpa")
    plan = Plan.dense(ModelFingerprint.from_config(model.config), sink=4, block=4)
    ids = torch.randint(3, 96, (1, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_prefill = model(ids).logits
        ref = model.generate(ids, max_new_tokens=STEPS, **greedy)
        apply_plan(model, plan)
        cache = MoACache(plan, model.config, max_length=ids.shape[1] + STEPS)
        got_prefill = model(ids, cache=cache).logits
        got = model.generate(ids, max_new_tokens=STEPS, **greedy)
    torch.testing.assert_close(got_prefill, ref_prefill, atol=1e-5, rtol=0)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(step_logits(got), step_logits(ref), atol=1e-5, rtol=0)
    assert got.sequences.shape[1] == ids.shape[1] + STEPS
    remove_plan(model)
    assert model.config._attn_implementation == "sdpa"
    assert "generate" not in vars(model)
