"""The transformers integration: the "moa" attention function, its mask function, and apply/remove.

This is the only module that touches transformers' extension points:

* `AttentionInterface` -> "moa": `moa_attention_forward`, selected by ``model.set_attn_implementation("moa")``.
* `AttentionMaskInterface` -> "moa": `moa_padding_mask`, which hands the 2-D padding mask through
  unchanged (causality, sink + window and padding are applied from positions by the attention itself).
* ``model.generate`` gets an instance-level wrapper (the same mechanism transformers uses for
  ``custom_generate``) that builds a `MoACache` sized N = prompt length + max_new_tokens when the
  caller passes no cache, and prefills prompts longer than ``prefill_chunk`` tokens in chunks
  (transformers' ``prefill_chunk_size``); `remove_plan` deletes it again. No class is modified.
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from moa_kernels import moa_prefill
from moa_plan import Plan
from moa_runtime.cache import MoACache, check_implementation, left_padding
from moa_runtime.errors import MoaRuntimeError
from moa_runtime.positional import positional_attention

__all__ = ["ATTN_NAME", "apply_plan", "remove_plan", "register", "moa_attention_forward", "moa_padding_mask"]

logger = logging.getLogger(__name__)

ATTN_NAME = "moa"


@dataclass
class _Applied:
    plan: Plan
    implementation: str
    previous_attn: str | None
    prefill_chunk: int | None = None


# Default prompt chunk of generate() with a plan: prompts longer than this are prefilled onto the
# MoACache in chunks, so the activations of a long prompt never exist all at once (see apply_plan).
PREFILL_CHUNK = 4096


# attention module -> (state, layer index): used when the model runs without a MoACache.
_MODULES: weakref.WeakKeyDictionary[torch.nn.Module, tuple[_Applied, int]] = weakref.WeakKeyDictionary()
_MODELS: weakref.WeakKeyDictionary[torch.nn.Module, _Applied] = weakref.WeakKeyDictionary()


def moa_padding_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """Mask builder for "moa": return the 2-D padding mask [B, kv_length] (bool) or None, unchanged."""
    return attention_mask


def register() -> None:
    """Register "moa" with transformers' `AttentionInterface` and `AttentionMaskInterface` (idempotent)."""
    AttentionInterface.register(ATTN_NAME, moa_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, moa_padding_mask)


def _padding_2d(attention_mask: Any) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        return attention_mask.to(torch.bool)
    raise MoaRuntimeError("the 'moa' attention takes a 2-D padding mask; custom 4-D masks are not supported.")


def moa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function "moa" (same signature as ``sdpa_attention_forward``).

    Args:
        module: the attention module (``layer_idx`` is read when running without a MoACache).
        query: [B, HQ, T, D]; key, value: [B, H, T_k, D] (the new tokens with a MoACache).
        attention_mask: the 2-D padding mask from `moa_padding_mask`, or None.
        scaling: softmax scale (default ``1 / sqrt(D)``).

    Returns:
        (o [B, T, HQ, D], None).
    """
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    padding = _padding_2d(attention_mask)
    layer = kwargs.get("moa_layer")
    if layer is not None:
        return layer.attend(query, padding, scale), None
    return _without_cache(module, query, key, value, padding, scale), None


def _without_cache(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    padding: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Dense keys (no cache, or a non-MoA cache): the plan's mask with N = the key length of this call."""
    entry = _MODULES.get(module)
    if entry is None:
        raise MoaRuntimeError("attn_implementation 'moa' is set on a model without a plan; use moa_runtime.apply_plan.")
    state, layer_idx = entry
    bsz, h, nk, _ = key.shape
    seqlen = query.shape[2]
    windows = state.plan.windows(nk)[layer_idx]
    kvalid = torch.ones(bsz, nk, dtype=torch.bool, device=query.device)
    if padding is not None and padding.shape[1] == nk:
        kvalid = padding.to(query.device)
    if nk == seqlen and (start := left_padding(kvalid)) is not None:
        out = moa_prefill(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            sink=state.plan.sink,
            windows=torch.as_tensor(windows, device=query.device),
            start=start,
            scale=scale,
            implementation=state.implementation,
        )
        assert isinstance(out, torch.Tensor)
        return out
    kpos = torch.cumsum(kvalid.to(torch.int64), dim=1) - 1
    keys = [key[:, i] for i in range(h)]
    values = [value[:, i] for i in range(h)]
    return positional_attention(
        query,
        keys,
        values,
        [kpos] * h,
        [kvalid] * h,
        kpos[:, -seqlen:],
        kvalid[:, -seqlen:],
        sink=state.plan.sink,
        windows=[int(w) for w in windows],
        scale=scale,
    )


def _attention_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    found = []
    for mod in model.modules():
        idx = getattr(mod, "layer_idx", None)
        if isinstance(idx, int) and hasattr(mod, "k_proj") and hasattr(mod, "config"):
            found.append((mod, idx))
    return found


def _prompt_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    for value in (
        args[0] if args else None,
        kwargs.get("inputs"),
        kwargs.get("input_ids"),
        kwargs.get("inputs_embeds"),
    ):
        if isinstance(value, torch.Tensor):
            return int(value.shape[1]) if value.dim() >= 2 else int(value.shape[0])
    raise MoaRuntimeError("generate() was called without input_ids, so the MoA cache cannot be sized.")


def _new_tokens(model: Any, prompt: int, kwargs: dict[str, Any]) -> int:
    if kwargs.get("max_new_tokens") is not None:
        return int(kwargs["max_new_tokens"])
    config = kwargs.get("generation_config") or model.generation_config
    if kwargs.get("max_length") is not None:
        return max(0, int(kwargs["max_length"]) - prompt)
    if getattr(config, "max_new_tokens", None) is not None:
        return int(config.max_new_tokens)
    return max(0, int(getattr(config, "max_length", None) or 20) - prompt)


def _generate(model: Any, original: Any, *args: Any, **kwargs: Any) -> Any:
    """``model.generate`` after apply_plan: add a MoACache (N = prompt + max_new_tokens) unless one is given."""
    state = _MODELS.get(model)
    wants_cache = kwargs.get("use_cache", True) is not False and kwargs.get("cache_implementation") is None
    if state is not None and wants_cache and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
        prompt = _prompt_length(args, kwargs)
        n = prompt + _new_tokens(model, prompt, kwargs)
        kwargs["cache"] = MoACache(state.plan, model.config, max_length=n, implementation=state.implementation)
        logger.debug("generate: MoACache with N=%d", n)
        config = kwargs.get("generation_config") or model.generation_config
        chosen = kwargs.get("prefill_chunk_size", getattr(config, "prefill_chunk_size", None))
        if chosen is None and state.prefill_chunk is not None and prompt > state.prefill_chunk:
            # The cache keeps only each head's span, so chunks attend over it exactly as one pass would.
            kwargs["prefill_chunk_size"] = state.prefill_chunk
    return original(*args, **kwargs)


def apply_plan(
    model: Any, plan: Plan, *, implementation: str = "auto", prefill_chunk: int | None = PREFILL_CHUNK
) -> Any:
    """Run ``model`` with ``plan``: register "moa", select it, and make ``generate`` build a MoACache.

    Args:
        model: a transformers decoder (Llama, Mistral, Qwen2, Qwen3, ... with AttentionInterface dispatch).
        plan: a `moa_plan.Plan` whose fingerprint matches ``model.config``.
        implementation: "auto", "reference" or "triton" for the attention ops.
        prefill_chunk: ``generate`` prefills prompts longer than this many tokens in chunks of it
            (unless the call sets ``prefill_chunk_size`` itself), so that peak memory is the cache
            plus one chunk's activations instead of the whole prompt's; None prefills in one pass.
            The result is the same up to float rounding (each chunk attends over the cached spans).

    Returns:
        The same model (modified in place).

    Raises:
        moa_plan.PlanError: the plan does not fit the model (names the differing field), before any compute.
    """
    check_implementation(implementation)
    if prefill_chunk is not None and int(prefill_chunk) < 1:
        raise MoaRuntimeError(f"prefill_chunk must be a positive number of tokens or None, got {prefill_chunk}.")
    if implementation == "triton" and model.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise MoaRuntimeError(f"implementation 'triton' needs the model on CUDA, not {model.device.type}.")
    config = model.config.get_text_config(decoder=True)
    plan.check_compatible(config)
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        logger.warning("the model's own sliding window is replaced by the plan's per-head sink + window mask")
    if model in _MODELS:
        remove_plan(model)
    register()
    state = _Applied(
        plan=plan,
        implementation=implementation,
        previous_attn=config._attn_implementation,
        prefill_chunk=None if prefill_chunk is None else int(prefill_chunk),
    )
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:
        raise MoaRuntimeError(f"{type(model).__name__} does not dispatch attention through AttentionInterface.")
    for mod, idx in _attention_modules(model):
        _MODULES[mod] = (state, idx)
    _MODELS[model] = state
    model.generate = functools.partial(_generate, model, model.generate)
    return model


def remove_plan(model: Any) -> Any:
    """Undo `apply_plan`: restore the previous attention implementation and the class's ``generate``."""
    state = _MODELS.pop(model, None)
    if state is None:
        return model
    for mod, _ in _attention_modules(model):
        _MODULES.pop(mod, None)
    if "generate" in vars(model):
        del model.generate
    model.set_attn_implementation(state.previous_attn or "sdpa")
    return model
