"""Tiny fixtures for tests and measurements: a word-level tokenizer with a chat template, seeded Llamas.

Nothing here downloads anything; models are built from configs with a fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHAT_TEMPLATE", "SPECIAL", "WORDS", "eos_biased", "make_model", "make_tokenizer", "records_file", "text"]

SPECIAL = ["<pad>", "<unk>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = [f"w{i}" for i in range(90)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A fast word-level tokenizer: whitespace-separated words, one token each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def make_model(
    *, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 32, seed: int = 0, std: float = 0.02
) -> torch.nn.Module:
    """A tiny seeded Llama (fp32, SDPA attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        initializer_range=std,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def text(n: int, seed: int) -> str:
    """``n`` pseudo-random words of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))


def eos_biased(model: torch.nn.Module, strength: float = 1.0) -> torch.nn.Module:
    """Make <|end|> compete with a common word, so some answers stop before the cap."""
    with torch.no_grad():
        head = model.get_output_embeddings().weight  # type: ignore[operator]
        head[3] = head[len(SPECIAL) + 5] * strength
    return model


def records_file(path: Path, sizes: list[int], question: str = "w1 w2") -> Path:
    """A JSON Lines records file with contexts of the given word counts."""
    with path.open("w") as handle:
        for i, n in enumerate(sizes):
            handle.write(json.dumps({"task": "t", "context": text(n, 100 + i), "question": question}) + "\n")
    return path
