"""The committed reference model: offline loading, tokenizer, chat template, and a retrieval smoke test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from moa_plan import ModelFingerprint
from moa_plan.tasks import generate, score, to_messages, vocabulary, word_count

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "moa-reference"


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tokenizer(offline):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def model(offline):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(MODEL).eval()


def test_files_and_size() -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "eval.json",
    ):
        assert (MODEL / name).is_file(), name
    assert sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file()) <= 30 * 2**20


def test_config_is_gqa_llama(model) -> None:
    fp = ModelFingerprint.from_model_path(MODEL)
    assert fp.architecture == "LlamaForCausalLM"
    assert fp.num_key_value_heads < fp.num_attention_heads
    assert fp.group_size == fp.num_attention_heads // fp.num_key_value_heads
    assert fp.max_position_embeddings >= 2048
    assert model.config.tie_word_embeddings


def test_tokenizer_round_trip(tokenizer) -> None:
    for task in ("lines", "passkey", "multikey", "local", "rewrite"):
        for r in generate(task, 2, target_length=300, seed=0):
            text = f"{r.context}\n{r.question}".strip()
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            # Oracle: the word-level tokenizer has one token per whitespace-separated word.
            assert len(ids) == word_count(text)
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == " ".join(text.split())
    assert len(tokenizer) == 7 + len(vocabulary().words())


def test_chat_template(tokenizer) -> None:
    key, value = vocabulary().keys[0], vocabulary().values[0]
    messages = [
        {"role": "system", "content": "answer with the value"},
        {"role": "user", "content": f"line {key} {value}\nwhat is line {key}"},
        {"role": "assistant", "content": f"{key} {value}"},
        {"role": "user", "content": f"what is line {key}"},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    # Oracle: the template's layout written out token by token.
    expected = (
        f"<s> <|system|> answer with the value <|user|> line {key} {value} what is line {key} <|assistant|> "
        f"{key} {value} <|end|> <|user|> what is line {key} <|assistant|>"
    ).split()
    assert tokenizer.convert_ids_to_tokens(ids) == expected
    assert tokenizer.eos_token == "<|end|>"
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_greedy_accuracy_matches_model_card(model, tokenizer) -> None:
    """Greedy lines/passkey accuracy at 512 tokens agrees with the committed eval.json (model card)."""
    claimed = json.loads((MODEL / "eval.json").read_text())["dense"]
    for task in ("lines", "passkey"):
        records = generate(task, 20, target_length=512, seed=77, overhead=3)
        hits = 0.0
        for r in records:
            ids = tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
            assert ids.shape[1] <= 512
            out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            hits += score(r, tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        # 20 samples: a binomial standard error of at most 0.11, so 0.3 is about 3 sigma.
        assert abs(hits / len(records) - claimed[task]["512"]["accuracy"]) <= 0.3


def test_sink_window_attention_matches_explicit_mask() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from eval_reference_model import _WINDOW, sink_window_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 8, generator=g) for h in (4, 2, 2))
    _WINDOW.update(sink=4, window=7)
    out, _ = sink_window_attention(None, q, k, v, None, scaling=0.5)
    # Oracle: dense softmax with the mask written out element by element.
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = (q @ kk.transpose(-1, -2)) * 0.5
    for i in range(40):
        for j in range(40):
            if not (j <= i and (j < 4 or i - j < 7)):
                scores[..., i, j] = float("-inf")
    ref = (scores.softmax(-1) @ vv).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_each_task_needs_one_whole_kv_head(offline) -> None:
    """README's probe table: lines needs layer 1 KV head 1 whole, passkey layer 0 KV head 1.

    Each probe keeps one KV head whole and the other three at sink + one block, served by the
    moa runtime; this is the fact that bounds what a 25% budget (one head's worth) can keep.
    """
    from moa.evaluate import load_model, parse_plan_specs, retrieval_eval

    model, tokenizer = load_model(MODEL)
    specs = parse_plan_specs(["heads"], ModelFingerprint.from_config(model.config))
    rows = retrieval_eval(model, tokenizer, specs, lengths=[1024], samples=10, seed=5)
    acc = {
        (task, plan): sum(r["correct"] for r in rows if (r["task"], r["plan"]) == (task, plan)) / 10
        for task in ("lines", "passkey")
        for plan in ("head-0.0", "head-0.1", "head-1.0", "head-1.1")
    }
    needed = {"lines": "head-1.1", "passkey": "head-0.1"}
    for (task, plan), value in acc.items():
        if plan == needed[task]:
            assert value >= 0.8, acc
        else:
            assert value <= 0.4, acc
