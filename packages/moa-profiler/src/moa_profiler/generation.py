"""Greedy, batched, left-padded generation with per-prompt caps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from moa_profiler.models import input_device

__all__ = ["generate_greedy", "stop_token_ids"]


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids of the model's generation config and of the tokenizer."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    for value in eos if isinstance(eos, list | tuple) else [eos]:
        if value is not None:
            ids.add(int(value))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    caps: Sequence[int],
    *,
    stops: set[int],
    batch_size: int = 4,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, each cut at its first stop token (kept) and its cap.

    Args:
        model: A causal LM.
        tokenizer: Supplies the pad id (its eos id when it has no pad token).
        prompts: Token ids, one list per prompt.
        caps: Most new tokens per prompt.
        stops: Ids that end an answer.
        batch_size: Prompts per generate call (similar lengths are batched together).

    Returns:
        New token ids per prompt, in input order.
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    device = input_device(model)  # the first device of a split model
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for at in range(0, len(order), batch_size):
        chunk = order[at : at + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        config = GenerationConfig(
            max_new_tokens=max(caps[i] for i in chunk),
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=sorted(stops),
        )
        seq = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # type: ignore[operator]
        for row, i in enumerate(chunk):
            tokens = seq[row, width:].tolist()
            end = next((t + 1 for t, tok in enumerate(tokens) if tok in stops), len(tokens))
            out[i] = tokens[: min(end, caps[i])]
    return out
