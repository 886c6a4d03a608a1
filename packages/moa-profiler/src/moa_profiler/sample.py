"""Profile one calibration sample: answer-token loss, one backward pass, per-layer influence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moa_profiler.attention import PROFILE_ATTENTION, Recorder, recording
from moa_profiler.errors import ProfilerError
from moa_profiler.influence import layer_influence

__all__ = ["InfluenceSettings", "SampleInfluence", "answer_loss", "prepare_model", "profile_sample"]


@dataclass(frozen=True, kw_only=True)
class InfluenceSettings:
    """How influence is reduced.

    Attributes:
        sink: Sink tokens S (keys j < S go to the sink share).
        block: Block size B of the block map.
        block_map: Also accumulate the ``[nb, nb]`` block map.
        max_elements: Bound on one ``[HQ, rows, T]`` chunk tensor (None: by device, see `layer_influence`).
        dtype: Compute dtype of the influence (float32; float64 for tests).
    """

    sink: int = 64
    block: int = 64
    block_map: bool = False
    max_elements: int | None = None
    dtype: torch.dtype = torch.float32


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
