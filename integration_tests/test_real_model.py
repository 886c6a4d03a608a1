"""The runtime on the real model (SmolLM2-135M-Instruct, `make assets`) against independent oracles.

- A dense plan gives the plain transformers model's greedy tokens and logits (1k prompt, 32 tokens).
- A mixed per-head plan (different rules per KV head, GQA 3:1) gives the logits of an explicit
  sink + window boolean mask run through plain SDPA (`moa_runtime.testing.oracle_logits`), at every
  generated step.
- A left-padded batch of prompts of different lengths equals each prompt run alone.

The prompts are essay text; which essays does not matter here (no plan is graded).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moa_plan import ModelFingerprint, Plan
from moa_plan.assets import model_dir, read_essays
from moa_runtime import MoACache, apply_plan, remove_plan
from moa_runtime.testing import oracle_logits, step_logits

MODEL = model_dir()
pytestmark = pytest.mark.skipif(
    not (MODEL / ".moa-asset.json").is_file(), reason="real model not fetched (run `make assets`)"
)


@pytest.fixture(scope="module")
def model_tok():  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="sdpa", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.padding_side = "left"
    return model, tok


def _ids(tok, tokens: int, offset: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    essays = read_essays()
    text = "\n\n".join(essays[name] for name in sorted(essays)[offset : offset + 3])
    return list(tok(text, add_special_tokens=False).input_ids[:tokens])


def _greedy(model, ids: torch.Tensor, new: int, **kwargs):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model.generate(
            ids,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=2,
            **kwargs,
        )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_dense_plan_equals_the_plain_model(model_tok) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_tok
    ids = torch.tensor([_ids(tok, 1024)])
    plain = _greedy(model, ids, 32)
    apply_plan(model, Plan.dense(ModelFingerprint.from_config(model.config)))
    try:
        moa = _greedy(model, ids, 32)
    finally:
        remove_plan(model)
    assert moa.sequences.tolist() == plain.sequences.tolist()
    assert _relative(step_logits(moa), step_logits(plain)) < 1e-5


def _mixed_plan(model) -> Plan:  # type: ignore[no-untyped-def]
    """Every KV head its own rule: narrow fixed windows, proportional ones, whole heads (sink 16, block 16)."""
    fp = ModelFingerprint.from_config(model.config)
    rng = np.random.default_rng(0)
    choices = [(0.0, 1.0), (32.0, 0.0), (0.0, 0.25), (96.0, 0.125), (0.0, 0.5), (160.0, 0.0)]
    pick = rng.integers(len(choices), size=(fp.num_layers, fp.num_key_value_heads))
    alphas = np.array([[choices[k][0] for k in row] for row in pick])
    betas = np.array([[choices[k][1] for k in row] for row in pick])
    return Plan.from_arrays(fp, alphas, betas, sink=16, block=16)


def test_mixed_plan_equals_the_explicit_mask_oracle(model_tok) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_tok
    prompt, new = _ids(tok, 600, offset=3), 8
    plan = _mixed_plan(model)
    n = len(prompt) + new
    assert len(set(plan.spans(n).ravel().tolist())) >= 4  # really mixed at this length
    apply_plan(model, plan)
    try:
        out = _greedy(model, torch.tensor([prompt]), new)
    finally:
        remove_plan(model)
    full = out.sequences  # prompt + generated: the oracle reruns it in one masked forward
    want = oracle_logits(model, plan, n, full)[:, len(prompt) - 1 : len(prompt) - 1 + new]
    assert _relative(step_logits(out), want) < 1e-4


def test_left_padded_batch_equals_each_prompt_alone(model_tok) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_tok
    prompts = [_ids(tok, n, offset=k) for k, n in enumerate((300, 460, 380))]
    width, new = max(map(len, prompts)), 8
    plan = Plan.uniform(ModelFingerprint.from_config(model.config), 0.5, sink=16, block=16)
    ids = torch.full((len(prompts), width), 2, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    apply_plan(model, plan)
    try:
        batch = _greedy(model, ids, new, attention_mask=mask)
        for i, p in enumerate(prompts):
            # Unpadded, with the cache sized for the batch's N (the same spans as in the batch).
            alone = _greedy(model, torch.tensor([p]), new, cache=MoACache.for_generation(model, plan, width, new))
            assert batch.sequences[i, width:].tolist() == alone.sequences[0, len(p) :].tolist()
            assert _relative(step_logits(batch)[i], step_logits(alone)[0]) < 1e-4
    finally:
        remove_plan(model)
