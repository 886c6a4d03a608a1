"""The Triton path (moa-kernels' kernels) inside the runtime: interpreter on CPU, real kernels on CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = """
import torch
from moa_runtime import apply_plan
from moa_runtime.testing import make_model, mixed_plan, oracle_logits, step_logits
torch.manual_seed(0)
model = make_model("llama", kv_heads=2)
plan = mixed_plan(model)
ids = torch.randint(3, 96, (2, 21))
mask = torch.ones_like(ids)
mask[1, :5] = 0
apply_plan(model, plan, implementation="triton")
with torch.no_grad():
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
full = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], dim=1)
oracle = oracle_logits(model, plan, 25, out.sequences[:, :-1], full)
err = (step_logits(out) - oracle[:, 20:]).abs().max().item()
assert err < 1e-4, err
print("ok", err)
"""


def test_triton_kernels_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_cuda_matches_reference_bf16() -> None:
    """Teacher-forced prefill + 32 decode steps, bf16, triton vs reference ops (same tokens for both)."""
    from moa_runtime import MoACache, apply_plan
    from moa_runtime.testing import make_model, mixed_plan

    model = make_model("qwen3", kv_heads=2).to("cuda", torch.bfloat16)
    plan = mixed_plan(model, sink=64, block=64)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (4, 700), generator=gen).cuda()
    steps = torch.randint(3, 96, (4, 32), generator=gen).cuda()
    results = {}
    for impl in ("reference", "triton"):
        apply_plan(model, plan, implementation=impl)
        cache = MoACache(plan, model.config, max_length=700 + 32, implementation=impl)
        with torch.no_grad():
            logits = [model(ids, cache=cache).logits[:, -1]]
            for t in range(32):
                logits.append(model(steps[:, t : t + 1], cache=cache).logits[:, -1])
        results[impl] = torch.stack(logits, dim=1).float()
    torch.testing.assert_close(results["triton"], results["reference"], atol=5e-2, rtol=5e-2)
