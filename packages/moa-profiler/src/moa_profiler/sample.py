"""Profile one calibration sample: answer-token loss, one backward pass, per-layer influence.

Or, with ``statistic="ablation"``, measure instead of estimate: the answer loss with each KV head
cut to the sink plus a window, for a grid of windows, one forward pass each (see `ablate_sample`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from moa_profiler.attention import PROFILE_ATTENTION, Recorder, masking, recording
from moa_profiler.errors import ProfilerError
from moa_profiler.influence import layer_influence

__all__ = [
    "STATISTICS",
    "InfluenceSettings",
    "SampleInfluence",
    "Reuse",
    "ablate_sample",
    "decoder_layers",
    "head_counts",
    "ablation_windows",
    "monotone_ablation",
    "answer_loss",
    "prepare_model",
    "profile_sample",
]

STATISTICS = ("influence", "ablation", "greedy", "gate")


@dataclass(frozen=True, kw_only=True)
class InfluenceSettings:
    """How influence is reduced.

    Attributes:
        sink: Sink tokens S (keys j < S go to the sink share).
        block: Block size B of the block map.
        block_map: Also accumulate the ``[nb, nb]`` block map.
        max_elements: Bound on one ``[HQ, rows, T]`` chunk tensor (None: by device, see `layer_influence`).
        dtype: Compute dtype of the influence (float32; float64 for tests).
        statistic: ``influence`` (MoA's first-order |E|, one backward per sample) or ``ablation``
            (measured loss of cutting each KV head, one forward per head and window; exact for one
            head at a time, cost ``layers x kv_heads x ablation_points`` forwards per sample).
        ablation_points: Most windows measured per KV head with ``ablation``.
        greedy_group: KV heads cut per round with ``greedy`` (0: an eighth of them), see `moa_profiler.greedy`.
        greedy_stop: Fraction of the KV heads the ``greedy`` search cuts before it stops.
        greedy_lazy: From the second greedy round on, measure only the heads whose previous marginal
            could still make them among the cheapest (see `moa_profiler.greedy`).
        gate_steps: Training steps of the ``gate`` statistic (one sample each), see `moa_profiler.gate`.
        gate_lr: Adam learning rate of the gates.
        gate_penalty: The L1 penalty on the gates at the last step, in nats per open KV head (it grows geometrically
            from 1/256 of it).
        gate_seed: Seed of the order in which the gate training visits the samples.
    """

    sink: int = 64
    block: int = 64
    block_map: bool = False
    max_elements: int | None = None
    dtype: torch.dtype = torch.float32
    statistic: str = "influence"
    ablation_points: int = 32
    greedy_group: int = 0
    greedy_stop: float = 0.75
    greedy_lazy: bool = False
    gate_steps: int = 300
    gate_lr: float = 0.02
    gate_penalty: float = 0.5
    gate_seed: int = 0

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ProfilerError(f"unknown statistic {self.statistic!r}; expected one of {', '.join(STATISTICS)}")
        if self.statistic == "ablation" and self.block_map:
            raise ProfilerError("the ablation statistic has no block map; drop --block-map")
        if self.statistic != "influence" and self.block_map:
            raise ProfilerError(f"the {self.statistic} statistic has no block map; drop --block-map")
        if not 0 < self.greedy_stop < 1 or self.greedy_group < 0:
            raise ProfilerError(
                f"greedy_stop must lie in (0, 1) and greedy_group be >= 0, got {self.greedy_stop}, {self.greedy_group}"
            )
        if self.gate_steps < 1 or not self.gate_lr > 0 or not self.gate_penalty >= 0:
            raise ProfilerError(
                f"gate_steps must be positive, gate_lr > 0 and gate_penalty >= 0, got {self.gate_steps}, "
                f"{self.gate_lr}, {self.gate_penalty}"
            )
        if self.ablation_points < 1:
            raise ProfilerError(f"ablation_points must be positive, got {self.ablation_points}")


@dataclass
class SampleInfluence:
    """Influence sums of one sample (float64, on the CPU).

    Attributes:
        loss: Mean cross-entropy over the answer tokens.
        hist: ``[L, HQ, K]``; sink: ``[L, HQ]``; block_map: ``[L, HQ, nb, nb]`` or None.
    """

    loss: float
    hist: torch.Tensor
    sink: torch.Tensor
    block_map: torch.Tensor | None


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze every parameter and switch the model to the profiling attention (eval mode).

    The profiling attention must have been registered (`register_profiling_attention`).

    Raises:
        ProfilerError: for attention the recompute does not model (sliding-window layers, softcapping).
    """
    config = getattr(model, "config", None)
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types - {"full_attention"} or getattr(config, "attn_logit_softcapping", None):
        raise ProfilerError(
            "the model has sliding-window or softcapped attention layers; the profiler models plain causal attention only"
        )
    model.eval()
    model.requires_grad_(False)
    model.set_attn_implementation(PROFILE_ATTENTION)  # type: ignore[operator]
    return model


def answer_loss(model: torch.nn.Module, ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Mean cross-entropy of the tokens ``ids[start:stop]`` (each predicted from its prefix).

    Args:
        model: A causal LM.
        ids: ``[T]`` int64 token ids (one unpadded sequence).
        start, stop: The answer span, ``1 <= start < stop <= T``.

    Returns:
        Scalar float32 loss (with a graph when the inputs require grad).
    """
    length = ids.shape[0]
    # Logits only for positions start-1 .. T-1: the vocabulary projection of the context is never built.
    out = model(input_ids=ids[None], use_cache=False, logits_to_keep=length - start + 1)
    logits = out.logits[0, : stop - start].float()
    return F.cross_entropy(logits, ids[start:stop])


def profile_sample(
    model: torch.nn.Module, ids: torch.Tensor, start: int, stop: int, settings: InfluenceSettings
) -> SampleInfluence:
    """Forward, backward and per-layer influence of one sample.

    Args:
        model: Prepared with `prepare_model` (frozen, profiling attention).
        ids: ``[T]`` int64 token ids on the model's device.
        start, stop: Answer span.
        settings: Sink, block and chunking.

    Raises:
        ProfilerError: if the loss is not finite or a layer got no gradient.
    """
    recorder = Recorder()
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    # Hidden states require grad from the embeddings on, so no weight gradient is ever computed.
    handle = embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    try:
        with torch.enable_grad(), recording(recorder):
            loss = answer_loss(model, ids, start, stop)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ProfilerError(f"the answer loss is {value}; the model produces non-finite logits on this sample")
            loss.backward()
    finally:
        handle.remove()
    if not recorder.layers:
        raise ProfilerError("no attention layer used the profiling attention; prepare the model with prepare_model()")
    layers = []
    for index in sorted(recorder.layers):
        record = recorder.layers.pop(index)
        if record.do is None:
            raise ProfilerError(f"layer {index} got no gradient; the answer loss does not depend on it")
        layers.append(
            layer_influence(
                record.q,
                record.k,
                record.v,
                record.do,
                record.scale,
                sink=settings.sink,
                block=settings.block if settings.block_map else None,
                max_elements=settings.max_elements,
                dtype=settings.dtype,
            )
        )
        del record
    hist = torch.stack([layer.hist.cpu() for layer in layers])
    sink = torch.stack([layer.sink.cpu() for layer in layers])
    block_map = None
    if settings.block_map:
        block_map = torch.stack([layer.block_map.cpu() for layer in layers if layer.block_map is not None])
    if not (torch.isfinite(hist).all() and torch.isfinite(sink).all()):
        raise ProfilerError("the influence of this sample is not finite (the gradient overflowed)")
    return SampleInfluence(loss=value, hist=hist, sink=sink, block_map=block_map)


def head_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(layers, query heads, KV heads)`` of a transformers model, from its config."""
    config: Any = getattr(model, "config")  # noqa: B009 - nn.Module types attributes as Tensor | Module
    heads = int(config.num_attention_heads)
    return int(config.num_hidden_layers), heads, int(getattr(config, "num_key_value_heads", None) or heads)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's list of decoder layers (each with a ``self_attn``), or None if it has no such list."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(hasattr(m, "self_attn") for m in module):
            return module
    return None


class Reuse:
    """Reuse the unchanged layers of the uncut forward: a cut in layer ``l`` leaves layers ``< l`` as they were.

    The uncut forward records every decoder layer's output; within ``skip(l)`` layers ``0 .. l-1`` return
    those outputs instead of computing them (an instance-level ``forward``, removed on exit). About
    halves the cost of the ablation. Only used when each layer returns one tensor (as transformers'
    decoder layers do) and the recorded outputs are exact: `ablate_sample` checks the reused loss.
    """

    def __init__(self, layers: torch.nn.ModuleList) -> None:
        self.layers = layers
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)

    def recording(self) -> Any:
        handles = []
        for k, layer in enumerate(self.layers):

            def hook(module: Any, args: Any, output: Any, k: int = k) -> None:
                self.outputs[k] = output if isinstance(output, torch.Tensor) else None

            handles.append(layer.register_forward_hook(hook))
        return handles

    @property
    def usable(self) -> bool:
        return all(o is not None for o in self.outputs)

    def skip(self, upto: int) -> Any:
        reuse = self

        class _Skip:
            def __enter__(self) -> None:
                for k in range(upto):
                    out = reuse.outputs[k]
                    reuse.layers[k].forward = lambda *a, _out=out, **kw: _out  # type: ignore[method-assign]

            def __exit__(self, *exc: object) -> None:
                for k in range(upto):
                    reuse.layers[k].__dict__.pop("forward", None)

        return _Skip()


def ablation_windows(length: int, settings: InfluenceSettings) -> list[int]:
    """Windows measured per KV head at ``length``: multiples of the block below ``length - sink``.

    At most ``settings.ablation_points`` of them, evenly spaced in whole blocks from one block up;
    a window of ``length - sink`` or more cuts nothing, so it is the (free) end of the curve.
    """
    keys = length - settings.sink
    if keys <= settings.block:
        return []
    count = (keys - 1) // settings.block
    step = -(-count // settings.ablation_points)
    return [settings.block * k for k in range(1, count + 1, step)]


def ablate_sample(
    model: torch.nn.Module, ids: torch.Tensor, start: int, stop: int, settings: InfluenceSettings
) -> SampleInfluence:
    """Measured loss of cutting each KV head to the sink + a window, as a (signed) distance histogram.

    For KV head h of layer l and each window w_k of `ablation_windows`, the answer loss is measured
    with only that head cut (``masking``); ``D(w_k)`` is its increase over the full model (negative
    when the cut helps). The drop ``D(w_k) - D(w_{k+1})`` is spread evenly over the distances
    ``[w_k, w_{k+1})`` (``D = 0`` at ``T - sink``: nothing cut), split evenly over the KV head's query
    heads, so tail sums from ``w_k`` give back ``D(w_k)``. Sums over samples stay exact; the mean is
    made monotone by `monotone_ablation` before it is saved. The sink share is 0 (never cut).

    Raises:
        ProfilerError: if a loss is not finite.
    """
    layers, heads, kv_heads = head_counts(model)
    group = heads // kv_heads
    length = int(ids.shape[0])
    keys = max(length - settings.sink, 1)
    windows = ablation_windows(length, settings)
    edges = [*windows, keys]
    hist = torch.zeros(layers, heads, keys, dtype=torch.float64)

    def loss() -> float:
        value = float(answer_loss(model, ids, start, stop))
        if not math.isfinite(value):
            raise ProfilerError(f"the answer loss is {value}; the model produces non-finite logits on this sample")
        return value

    found = decoder_layers(model)
    reuse = Reuse(found) if found is not None and len(found) == layers else None
    with torch.no_grad():
        handles = reuse.recording() if reuse is not None else []
        try:
            base = loss()
        finally:
            for handle in handles:
                handle.remove()
        if reuse is not None and reuse.usable:
            with reuse.skip(layers):
                reused = loss()  # every layer from the record: must give the uncut loss exactly
            if abs(reused - base) > 1e-6 * max(1.0, abs(base)):
                reuse = None
        else:
            reuse = None
        for layer in range(layers):
            for kv in range(kv_heads):
                deltas = []
                for window in windows:
                    with (
                        masking(layer, kv, window, settings.sink),
                        reuse.skip(layer) if reuse is not None else contextlib.nullcontext(),
                    ):
                        deltas.append(loss() - base)
                deltas.append(0.0)
                for k, window in enumerate(windows):
                    width = edges[k + 1] - window
                    hist[layer, kv * group : (kv + 1) * group, window : edges[k + 1]] = (deltas[k] - deltas[k + 1]) / (
                        group * width
                    )
    return SampleInfluence(loss=base, hist=hist, sink=torch.zeros(layers, heads, dtype=torch.float64), block_map=None)


def monotone_ablation(hist: torch.Tensor, length: int, settings: InfluenceSettings) -> torch.Tensor:
    """The mean ablation histogram made a loss curve the optimizer can trust.

    From the signed mean curve ``D(w_k)`` (tail sums at the measured windows) this keeps
    ``E(w_k) = max(0, max_{j >= k} D(w_j))``: a narrower window never costs less than a wider one,
    and a cut that lowers the mean loss costs 0. Each step ``E(w_k) - E(w_{k+1})`` is spread evenly
    over ``[w_k, w_{k+1})`` again, so ``Profile.window_loss(w_k) == E(w_k)`` and the result is >= 0.
    """
    windows = ablation_windows(length, settings)
    keys = hist.shape[-1]
    edges = [*windows, keys]
    tail = hist.flip(-1).cumsum(-1).flip(-1)
    out = torch.zeros_like(hist)
    envelope = torch.zeros(hist.shape[:-1], dtype=hist.dtype)
    for k in range(len(windows) - 1, -1, -1):
        lower = torch.maximum(tail[..., windows[k]].clamp(min=0.0), envelope)
        out[..., windows[k] : edges[k + 1]] = ((lower - envelope) / (edges[k + 1] - windows[k]))[..., None]
        envelope = lower
    return out
