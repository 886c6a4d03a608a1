"""Test helpers: tiny random models, a word-level tokenizer, and the explicit-mask oracle attention.

The oracle is independent of the runtime: it is registered with transformers under "moa_oracle", runs
on transformers' own dense caches (DynamicCache) and builds, for every call, the boolean mask
``[B, HQ, T, K]`` of DESIGN.md section 3 from token positions (``cumsum`` of the padding mask), then
calls `torch.nn.functional.scaled_dot_product_attention` with repeated K/V heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from moa_plan import ModelFingerprint, Plan

__all__ = [
    "ORACLE_NAME",
    "ARCHITECTURES",
    "make_model",
    "make_tokenizer",
    "mixed_plan",
    "oracle_attention",
    "oracle_logits",
    "step_logits",
    "use_oracle",
]

ORACLE_NAME = "moa_oracle"
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
_ORACLE: dict[str, Any] = {}


def make_model(arch: str, *, kv_heads: int = 2, heads: int = 4, layers: int = 2, seed: int = 0, vocab: int = 96) -> Any:
    """A tiny random-init causal LM (fp32, eval mode) of one of `ARCHITECTURES`, deterministic in ``seed``."""
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    configs = {
        "llama": lambda: tf.LlamaConfig(**common),
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**common, use_sliding_window=False),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=8, use_sliding_window=False),
    }
    classes = {
        "llama": tf.LlamaForCausalLM,
        "mistral": tf.MistralForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
    }
    torch.manual_seed(seed)
    config = configs[arch]()
    model = classes[arch](config).eval()
    with torch.no_grad():  # random-init weights are tiny; make logits differ visibly between tokens
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # fixed-length generations in tests
    return model


def make_tokenizer(vocab: int = 96) -> Any:
    """A whitespace word-level tokenizer over words ``w3 .. w{vocab-1}`` (ids 0/1/2 = pad/bos/eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2}
    words.update({f"w{i}": i for i in range(3, vocab)})
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.padding_side = "left"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def oracle_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Dense SDPA with the explicit per-head sink + window boolean mask built from token positions."""
    sink = int(_ORACLE["sink"])
    layer_idx = int(getattr(module, "layer_idx", 0))
    windows = torch.as_tensor(np.asarray(_ORACLE["windows"])[layer_idx], dtype=torch.int64)
    bsz, hq, seqlen, _ = query.shape
    h, nk = key.shape[1], key.shape[2]
    g = hq // h
    valid = torch.ones(bsz, nk, dtype=torch.bool)
    if attention_mask is not None:
        valid = attention_mask.to(torch.bool)[:, -nk:]
    kpos = torch.cumsum(valid.to(torch.int64), dim=1) - 1
    qpos = kpos[:, -seqlen:]
    w = windows.repeat_interleave(g).view(1, hq, 1, 1)
    qi = qpos.view(bsz, 1, seqlen, 1)
    kj = kpos.view(bsz, 1, 1, nk)
    allowed = valid.view(bsz, 1, 1, nk) & (kj <= qi) & ((kj < sink) | (qi - kj < w))
    seen = allowed.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        query,
        key.repeat_interleave(g, dim=1),
        value.repeat_interleave(g, dim=1),
        attn_mask=allowed | ~seen,
        scale=scaling,
    )
    out = out.masked_fill(~seen, 0.0)
    return out.transpose(1, 2).contiguous(), None


def _oracle_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    return attention_mask


@contextlib.contextmanager
def use_oracle(model: Any, sink: int, windows: Any) -> Iterator[Any]:
    """Run ``model`` with the oracle attention for windows ``[L, H]`` (e.g. ``plan.windows(N)``)."""
    AttentionInterface.register(ORACLE_NAME, oracle_attention)
    AttentionMaskInterface.register(ORACLE_NAME, _oracle_mask)
    previous = model.config._attn_implementation
    _ORACLE.update(sink=sink, windows=np.asarray(windows))
    model.set_attn_implementation(ORACLE_NAME)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
        _ORACLE.clear()


def mixed_plan(model: Any, sink: int = 4, block: int = 4) -> Plan:
    """A plan with different spans per (layer, KV head): narrow fixed windows, length-proportional, dense."""
    fp = ModelFingerprint.from_config(model.config)
    shape = (fp.num_layers, fp.num_key_value_heads)
    choices = [(0.0, 0.0), (0.0, 1.0), (10.0, 0.0), (0.0, 0.3), (6.0, 0.15)]
    alphas = np.zeros(shape)
    betas = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            alphas[i, j], betas[i, j] = choices[(i * shape[1] + j) % len(choices)]
    return Plan.from_arrays(fp, alphas, betas, sink=sink, block=block)


def oracle_logits(model: Any, plan: Plan, n: int, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, V] of one full forward over ``ids`` with the explicit-mask oracle at length N = ``n``."""
    if mask is None:
        mask = torch.ones_like(ids)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with use_oracle(model, plan.sink, plan.windows(n)), torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


def step_logits(out: Any) -> torch.Tensor:
    """generate(output_logits=True) -> [B, steps, V]."""
    return torch.stack(list(out.logits), dim=1)
