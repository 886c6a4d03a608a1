"""Across the stack on the reference model's own tasks: a dense plan gives the plain model's greedy
output, and a padded batch under a real plan equals each prompt run alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moa_plan import ModelFingerprint, Plan
from moa_plan.tasks import generate, to_messages
from moa_runtime import MoACache, apply_plan, remove_plan

MODEL = Path(__file__).resolve().parents[1] / "models" / "moa-reference"
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="no reference model committed")
NEW = 6


@pytest.fixture(scope="module")
def model_tok():  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL, use_safetensors=True, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.padding_side = "left"
    return model, tok


def _prompts(tok) -> list[str]:  # type: ignore[no-untyped-def]
    records = [generate(task, 1, target_length=n, seed=7, overhead=3)[0]
               for task, n in (("lines", 300), ("passkey", 420), ("lines", 520), ("multikey", 380))]  # fmt: skip
    return [tok.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False) for r in records]


def _generate(model, tok, prompts: list[str]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    return out[:, enc.input_ids.shape[1] :].tolist()


def test_dense_plan_equals_plain_model(model_tok) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_tok
    prompts = _prompts(tok)
    plain = _generate(model, tok, prompts)
    apply_plan(model, Plan.dense(ModelFingerprint.from_config(model.config)))
    try:
        moa = _generate(model, tok, prompts)
    finally:
        remove_plan(model)
    assert moa == plain


def test_padded_batch_equals_each_alone_under_a_half_plan(model_tok) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_tok
    prompts = _prompts(tok)
    # Same N for every run (the longest prompt + NEW), so every run uses the same spans.
    plan = Plan.from_arrays(ModelFingerprint.from_config(model.config), [[0, 64], [128, 0]], [[0.25, 0.5], [0.5, 0.25]])
    apply_plan(model, plan)
    try:
        batch = _generate(model, tok, prompts)
        width = max(len(tok(p, add_special_tokens=False).input_ids) for p in prompts)
        alone = []
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False).input_ids])
            # Unpadded, with the cache sized for the batch's N (same spans as the batch).
            cache = MoACache.for_generation(model, plan, width, NEW)
            with torch.no_grad():
                out = model.generate(ids, cache=cache, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                     pad_token_id=tok.pad_token_id)  # fmt: skip
            alone.append(out[0, ids.shape[1] :].tolist())
    finally:
        remove_plan(model)
    assert batch == alone
