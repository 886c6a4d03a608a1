"""End to end on the repository's reference model (skipped only while models/moa-reference holds no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from moa_plan import ModelFingerprint, Plan
from moa_plan.cli import main
from moa_plan.tasks import generate, to_messages
from moa_runtime import MoACache, apply_plan, remove_plan
from moa_runtime.testing import step_logits, use_oracle

MODEL = Path(__file__).resolve().parents[3] / "models" / "moa-reference"
pytestmark = pytest.mark.skipif(
    not (MODEL / "config.json").is_file(), reason="models/moa-reference has no model yet (no config.json)"
)
GREEDY = {"do_sample": False, "output_logits": True, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(MODEL)


def _prompt(tok, seed: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    record = generate("lines", 1, target_length=400, seed=seed, overhead=3)[0]
    enc = tok.apply_chat_template(
        to_messages(record), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return enc["input_ids"]


def test_half_density_plan_equals_oracle(model_and_tokenizer: tuple) -> None:
    model, tok = model_and_tokenizer
    plan = Plan.uniform(ModelFingerprint.from_model_path(MODEL), 0.5)
    ids = _prompt(tok, 3)
    n = ids.shape[1] + 8
    assert plan.windows(n).max() < ids.shape[1]  # the window really cuts the prompt
    with use_oracle(model, plan.sink, plan.windows(n)), torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, pad_token_id=tok.pad_token_id, **GREEDY)
    apply_plan(model, plan)
    try:
        with torch.no_grad():
            got = model.generate(ids, max_new_tokens=8, pad_token_id=tok.pad_token_id, **GREEDY)
            cache = MoACache(plan, model.config, max_length=n)
            model(ids, cache=cache)
    finally:
        remove_plan(model)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(step_logits(got), step_logits(ref), atol=1e-4, rtol=0)
    expected = plan.kv_bytes(n, batch=1, head_dim=plan.model.head_dim, dtype_bytes=4)
    assert cache.nbytes() == pytest.approx(expected, rel=0.03)


def test_dense_plan_equals_sdpa_and_cli_runs(model_and_tokenizer: tuple, tmp_path: Path) -> None:
    model, tok = model_and_tokenizer
    plan = Plan.dense(ModelFingerprint.from_model_path(MODEL))
    ids = _prompt(tok, 4)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, pad_token_id=tok.pad_token_id, **GREEDY)
        apply_plan(model, plan)
        try:
            got = model.generate(ids, max_new_tokens=8, pad_token_id=tok.pad_token_id, **GREEDY)
        finally:
            remove_plan(model)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(step_logits(got), step_logits(ref), atol=1e-4, rtol=0)
    plan_path = plan.save(tmp_path / "dense.json")
    prompt = "line bako 12345\nwhat is line bako"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "--model",
            str(MODEL),
            "--plan",
            str(plan_path),
            "--prompt",
            prompt,
            "--chat",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
