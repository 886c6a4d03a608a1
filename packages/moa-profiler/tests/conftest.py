"""Fixtures: a tiny word-level tokenizer with a chat template and tiny seeded Llama models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

SPECIAL = ["<pad>", "<unk>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = [f"w{i}" for i in range(90)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
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
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def text(n: int, seed: int) -> str:
    """``n`` pseudo-random words of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def model_factory() -> Callable[..., torch.nn.Module]:
    return make_model


@pytest.fixture
def words() -> Callable[[int, int], str]:
    return text


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A saved tiny model + tokenizer directory (what ``--model`` takes)."""
    path = tmp_path / "tiny-model"
    make_model(layers=2, heads=4, kv_heads=2, seed=1, std=0.2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def save_model_dir() -> Callable[..., Path]:
    """Save a tiny model and tokenizer under a directory; keyword arguments go to the builders."""

    def save(path: Path, *, chat_template: str | None = CHAT_TEMPLATE, **model_kwargs: object) -> Path:
        make_model(**model_kwargs).save_pretrained(path)  # type: ignore[arg-type]
        make_tokenizer(chat_template).save_pretrained(path)
        return path

    return save
