"""generate() companions: streamers, pipeline, no-cache forwards, implementation switch, remove_plan."""

from __future__ import annotations

import threading

import torch
from transformers import TextIteratorStreamer, TextStreamer, pipeline

from moa_runtime import MoACache, apply_plan, remove_plan
from moa_runtime.testing import make_model, make_tokenizer, mixed_plan, oracle_logits, use_oracle

PROMPT = " ".join(f"w{3 + (7 * i) % 90}" for i in range(30))


def test_streamers_see_the_generated_tokens(capsys) -> None:  # type: ignore[no-untyped-def]
    model, tok = make_model("qwen3"), make_tokenizer()
    plan = mixed_plan(model)
    apply_plan(model, plan)
    inputs = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(
            **inputs,
            max_new_tokens=10,
            do_sample=False,
            streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
        )
    text = tok.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert capsys.readouterr().out.strip() == text.strip()
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**inputs, "max_new_tokens": 10, "do_sample": False, "streamer": streamer}
    worker = threading.Thread(target=lambda: model.generate(**kwargs))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed.strip() == text.strip()


def test_pipeline_equals_oracle_generation() -> None:
    model, tok = make_model("mistral", kv_heads=2), make_tokenizer()
    plan = mixed_plan(model)
    n = len(PROMPT.split()) + 12
    with use_oracle(model, plan.sink, plan.windows(n)):
        expected = pipeline("text-generation", model=model, tokenizer=tok)(PROMPT, max_new_tokens=12, do_sample=False)
    apply_plan(model, plan)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    got = generator(PROMPT, max_new_tokens=12, do_sample=False)
    assert got[0]["generated_text"] == expected[0]["generated_text"]
    assert got[0]["generated_text"] != PROMPT


def test_forward_without_cache_uses_the_plan_at_the_call_length() -> None:
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    ids = torch.randint(3, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    apply_plan(model, plan)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    oracle = oracle_logits(model, plan, 40, ids, mask)
    torch.testing.assert_close(got[mask.bool()], oracle[mask.bool()], atol=1e-5, rtol=0)


def test_reference_implementation_matches_auto_and_remove_plan_restores() -> None:
    model = make_model("qwen2", kv_heads=2)
    plan = mixed_plan(model)
    ids = torch.randint(3, 96, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.generate(ids, max_new_tokens=6, do_sample=False)
        apply_plan(model, plan, implementation="reference")
        ref = model.generate(ids, max_new_tokens=6, do_sample=False)
        apply_plan(model, plan)  # applying again replaces the first application
        auto = model.generate(ids, max_new_tokens=6, do_sample=False)
        cache = MoACache(plan, model.config, max_length=36, implementation="reference")
        explicit = model.generate(ids, max_new_tokens=6, do_sample=False, cache=cache)
        remove_plan(model)
        after = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(ref, auto)
    assert torch.equal(ref, explicit)
    assert torch.equal(before, after)
    assert model.config._attn_implementation == "sdpa"


def test_benchmark_smoke() -> None:
    from moa_runtime.benchmark import decode_tokens_per_second

    model = make_model("llama", kv_heads=2)
    result = decode_tokens_per_second(model, length=512, batch=2, density=0.5, steps=2, repeats=1)
    assert result["moa_tokens_per_s"] > 0
    assert result["dense_tokens_per_s"] > 0
    assert result["moa_cache_bytes"] < 0.6 * result["dense_cache_bytes"]
    assert model.config._attn_implementation == "sdpa"
