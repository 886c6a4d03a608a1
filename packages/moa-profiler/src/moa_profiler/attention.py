"""The profiling attention function: ordinary causal attention that records q, k, v, o and dL/do.

It is registered with transformers' `AttentionInterface` by an explicit call
(`register_profiling_attention`) and selected with ``model.set_attn_implementation("moa_profile")``.
Inside `recording(recorder)` every call stores, per layer, the detached query ``[HQ, T, D]``, the
un-repeated keys and values ``[H, T, D]`` (after RoPE) and the output ``[HQ, T, D]``, and hooks the
output so the backward pass stores ``dO = dL/do``. Outside `recording` it is plain SDPA. Inside
`masking(layer, kv_head, window, sink)` the query heads of one KV head of one layer see only the
sink and the last ``window`` keys (what a plan's span does to them): the ablation statistic.
Nested `masking` blocks add up (every head named by an enclosing block is cut), which is how the
greedy statistic measures one more cut on top of the heads it has already cut. Inside
`gating(gates, window, sink)` every KV head's output is the mix ``g * full + (1 - g) * cut`` of its
full causal attention and its sink + ``window`` attention, with ``g = gates[layer, kv_head]`` a tensor
that may require grad: the gate statistic (`moa_profiler.gate`) learns it.
Only unpadded batches of one sequence are profiled, so no mask is needed: the name has no entry in
transformers' mask registry and the function applies causality itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from moa_profiler.errors import ProfilerError

__all__ = [
    "PROFILE_ATTENTION",
    "LayerRecord",
    "Recorder",
    "cut_attention",
    "gating",
    "masking",
    "profiling_attention",
    "recording",
    "register_profiling_attention",
]

PROFILE_ATTENTION = "moa_profile"
_ACTIVE: ContextVar[Recorder | None] = ContextVar("moa_profiler_recorder", default=None)
# (layer, kv_head, window, sink) of every KV head whose keys are cut.
_MASK: ContextVar[tuple[tuple[int, int, int, int], ...]] = ContextVar("moa_profiler_mask", default=())
# (gates [L, H], window, sink) while every KV head mixes its full and its cut attention.
_GATE: ContextVar[tuple[torch.Tensor, int, int] | None] = ContextVar("moa_profiler_gate", default=None)


@dataclass
class LayerRecord:
    """What one attention layer saw on one sequence (batch of one).

    Attributes:
        q: ``[HQ, T, D]`` queries after RoPE, model dtype.
        k: ``[H, T, D]`` keys after RoPE, not repeated over the query group.
        v: ``[H, T, D]`` values.
        o: ``[HQ, T, D]`` attention output (before the output projection).
        do: ``[HQ, T, D]`` dL/do, filled by the backward pass (None before it).
        scale: Softmax scale of the scores.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    scale: float
    do: torch.Tensor | None = None


@dataclass
class Recorder:
    """Per-layer records of one forward (and backward) pass, keyed by layer index."""

    layers: dict[int, LayerRecord] = field(default_factory=dict)

    def capture(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float
    ) -> None:
        """Store detached copies of one layer's tensors and hook ``out`` for its gradient.

        Args:
            layer: Layer index.
            q: ``[1, HQ, T, D]``; k, v: ``[1, H, T, D]``; out: ``[1, T, HQ, D]`` (requires grad).
            scale: Softmax scale.
        """
        if layer in self.layers:
            raise ProfilerError(f"layer {layer} ran twice in one profiled forward pass; is the model using a cache?")
        record = LayerRecord(
            q=q[0].detach(), k=k[0].detach(), v=v[0].detach(), o=out[0].detach().transpose(0, 1), scale=scale
        )
        self.layers[layer] = record

        def store(grad: torch.Tensor) -> None:
            record.do = grad[0].detach().transpose(0, 1)

        if out.requires_grad:
            out.register_hook(store)


@contextlib.contextmanager
def masking(layer: int, kv_head: int, window: int, sink: int) -> Iterator[None]:
    """Within the block, cut KV head ``kv_head`` of layer ``layer`` to the sink + last ``window`` keys.

    Query i of that head's group then sees key j iff ``j <= i`` and (``j < sink`` or ``i - j < window``),
    the span mask of DESIGN.md; every other head stays fully causal.
    """
    if window < 1 or sink < 0:
        raise ProfilerError(f"a masked window must be >= 1 and the sink >= 0, got window {window}, sink {sink}")
    token = _MASK.set((*_MASK.get(), (layer, kv_head, window, sink)))
    try:
        yield
    finally:
        _MASK.reset(token)


@contextlib.contextmanager
def gating(gates: torch.Tensor, window: int, sink: int) -> Iterator[None]:
    """Within the block, each KV head (l, h) outputs ``g * full + (1 - g) * cut``, ``g = gates[l, h]``.

    ``cut`` is the head's attention with the span mask of DESIGN.md (the sink + the last ``window``
    keys), ``full`` its causal attention; the query heads of a group share their KV head's gate.
    ``gates`` is ``[layers, kv_heads]`` and may require grad (the gate statistic trains it).
    """
    if window < 1 or sink < 0:
        raise ProfilerError(f"a gated window must be >= 1 and the sink >= 0, got window {window}, sink {sink}")
    if gates.dim() != 2:
        raise ProfilerError(f"gates must be [layers, kv_heads], got shape {tuple(gates.shape)}")
    token = _GATE.set((gates, window, sink))
    try:
        yield
    finally:
        _GATE.reset(token)


def _span_mask(length: int, heads: int, group: int, cuts: list[tuple[int, int, int]], device: Any) -> torch.Tensor:
    """``[1, heads, T, T]`` boolean keep-mask: causal, and sink + window for each cut ``(kv_head, window, sink)``."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    causal = j <= i
    mask = causal.expand(heads, length, length).clone()
    for kv_head, window, sink in cuts:
        rows = mask[kv_head * group : (kv_head + 1) * group]
        rows &= (j < sink) | (i - j < window)
    return mask[None]


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Make `profiling_attention` store into ``recorder`` within the block."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def profiling_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention in transformers' attention-interface signature.

    Args:
        module: The attention module (its ``layer_idx`` names the layer).
        query: ``[B, HQ, T, D]``; key, value: ``[B, H, T, D]``.
        attention_mask: Must be None (profiling runs unpadded sequences).
        dropout: Ignored (profiling runs in eval mode).
        scaling: Softmax scale; ``D ** -0.5`` when None.

    Returns:
        ``([B, T, HQ, D], None)``.
    """
    if attention_mask is not None:
        raise ProfilerError("the profiling attention got an attention mask; profile unpadded single sequences only")
    heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    group = heads // kv_heads
    k = key.repeat_interleave(group, dim=1) if group > 1 else key
    v = value.repeat_interleave(group, dim=1) if group > 1 else value
    layer = getattr(module, "layer_idx", None)
    every = _MASK.get()
    if every and layer is None:
        raise ProfilerError("the attention module has no layer_idx, so one layer's heads cannot be cut (ablation)")
    cuts = [(kv, window, sink) for at, kv, window, sink in every if layer is not None and at == int(layer)]
    gate = _GATE.get()
    if gate is not None:
        out = _gated(query, k, v, scale, gate, layer, kv_heads, group)
    elif cuts:
        bad = [kv for kv, _, _ in cuts if not 0 <= kv < kv_heads]
        if bad:
            raise ProfilerError(f"layer {layer} has {kv_heads} KV heads, no KV head {bad[0]}")
        out = _masked(query, k, v, scale, cuts, kv_heads, group)
    else:
        out = F.scaled_dot_product_attention(query, k, v, is_causal=length > 1, scale=scale)
    out = out.transpose(1, 2).contiguous()
    recorder = _ACTIVE.get()
    if recorder is not None:
        if query.shape[0] != 1:
            raise ProfilerError(f"profiling records one sequence at a time, got a batch of {query.shape[0]}")
        recorder.capture(len(recorder.layers) if layer is None else int(layer), query, key, value, out, scale)
    return out, None


def _gated(
    query: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    gate: tuple[torch.Tensor, int, int],
    layer: Any,
    kv_heads: int,
    group: int,
) -> torch.Tensor:
    """``[B, HQ, T, D]``: per KV head, its gate times full causal attention plus the rest times its cut attention."""
    gates, window, sink = gate
    if layer is None:
        raise ProfilerError("the attention module has no layer_idx, so its heads cannot be gated")
    if _MASK.get():
        raise ProfilerError("gating and masking cannot be combined in one forward pass")
    if gates.shape[1] != kv_heads or not 0 <= int(layer) < gates.shape[0]:
        raise ProfilerError(f"gates of shape {tuple(gates.shape)} do not fit layer {layer} with {kv_heads} KV heads")
    length = query.shape[2]
    full = F.scaled_dot_product_attention(query, k, v, is_causal=length > 1, scale=scale)
    if length <= sink + window:
        return full  # the cut sees every key: both outputs are the same
    cut = cut_attention(query, k, v, scale, window, sink)
    g = gates[int(layer)].to(device=query.device, dtype=query.dtype).repeat_interleave(group)[None, :, None, None]
    return cut + g * (full - cut)


def _masked(
    query: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    cuts: list[tuple[int, int, int]],
    kv_heads: int,
    group: int,
) -> torch.Tensor:
    """``[B, HQ, T, D]``: causal attention, with each cut ``(kv_head, window, sink)``'s query group cut to its span.

    Nested cuts of one KV head add up (a key is kept only if every cut keeps it), so a head cut twice gets
    the span mask of DESIGN.md of each cut combined.
    """
    length = query.shape[2]
    by_head = {kv: (window, sink) for kv, window, sink in cuts}
    if len(by_head) < len(cuts):  # a head cut twice: one mask holds every cut
        mask = _span_mask(length, query.shape[1], group, cuts, query.device)
        return F.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scale)
    parts = []
    for h in range(kv_heads):
        rows = slice(h * group, (h + 1) * group)
        q_h, k_h, v_h = query[:, rows], k[:, rows], v[:, rows]
        if h in by_head:
            parts.append(cut_attention(q_h, k_h, v_h, scale, *by_head[h]))
        else:
            parts.append(F.scaled_dot_product_attention(q_h, k_h, v_h, is_causal=length > 1, scale=scale))
    return torch.cat(parts, dim=1)


def cut_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, window: int, sink: int
) -> torch.Tensor:
    """``[B, H, T, D]`` attention in which query i sees key j iff ``j <= i`` and (``j < sink`` or ``i - j < window``).

    The span mask of DESIGN.md, computed in ``O(T (sink + 2 window))`` rather than ``O(T^2)`` when the window
    is short: the queries are cut into blocks of ``window``, and each block attends only to the sink, the
    block before it and itself (a key both in the sink and in the window counts once). Long windows take
    one masked attention over every key. Keys and values have as many heads as the queries (repeated over
    GQA groups by the caller).
    """
    batch, heads, length, dim = query.shape
    if length <= sink + window:
        return F.scaled_dot_product_attention(query, key, value, is_causal=length > 1, scale=scale)
    if sink + 2 * window >= length // 2:
        mask = _span_mask(length, 1, 1, [(0, window, sink)], query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    w, blocks = window, -(-length // window)
    pad = blocks * w - length
    q = F.pad(query, (0, 0, 0, pad)).reshape(batch, heads * blocks, w, dim)
    # One block of padding in front: block b of the padded keys is the block before query block b.
    kb = F.pad(key, (0, 0, w, pad)).view(batch, heads, blocks + 1, w, dim)
    vb = F.pad(value, (0, 0, w, pad)).view(batch, heads, blocks + 1, w, dim)
    keys = torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=3)
    values = torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=3)
    device = query.device
    i = (torch.arange(blocks, device=device)[:, None] * w + torch.arange(w, device=device)[None, :])[:, :, None]
    j = (torch.arange(blocks, device=device)[:, None] * w - w + torch.arange(2 * w, device=device)[None, :])[:, None, :]
    mask = (j >= 0) & (j <= i) & (i - j < w)  # [blocks, w, 2w]: the window
    if sink:
        keys = torch.cat([key[:, :, None, :sink].expand(batch, heads, blocks, sink, dim), keys], dim=3)
        values = torch.cat([value[:, :, None, :sink].expand(batch, heads, blocks, sink, dim), values], dim=3)
        js = torch.arange(sink, device=device)[None, None, :]
        mask = torch.cat([(js <= i) & (i - js >= w), mask], dim=-1)  # a sink key inside the window is kept there
    n = keys.shape[3]
    mask = mask[None].expand(heads, blocks, w, n).reshape(1, heads * blocks, w, n)
    keys, values = keys.reshape(batch, heads * blocks, n, dim), values.reshape(batch, heads * blocks, n, dim)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.view(batch, heads, blocks * w, dim)[:, :, :length]


def register_profiling_attention() -> str:
    """Register `profiling_attention` with transformers under `PROFILE_ATTENTION` and return the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(PROFILE_ATTENTION, profiling_attention)
    return PROFILE_ATTENTION
