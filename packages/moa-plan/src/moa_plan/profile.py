"""The profile file contract: attention influence of each head, by key distance.

One safetensors file per profiled length N. Tensor names (all required unless marked):

==============  ========================  ==============================================
name            shape, dtype              meaning
==============  ========================  ==============================================
``hist``        [L, HQ, K] float32/64     influence |E| summed over keys outside the sink,
                                          by distance d = i - j; bucket k holds distances
                                          ``[edges[k], edges[k+1])`` (K = N - S and edges
                                          = 0..K when exact)
``sink``        [L, HQ] float32/64        influence summed over sink keys (j < S)
``edges``       [K + 1] int64 (optional)  distance bucket edges; absent means exact
``block_map``   [L, HQ, nb, nb] (opt.)    influence summed in B x B blocks, for plots
==============  ========================  ==============================================

Metadata (str -> str): ``format`` = ``moa-profile``, ``format_version``, ``fingerprint``
(JSON), ``length``, ``sink``, ``block``, ``num_samples``, ``versions`` (JSON), optional
``created_at``, ``mean_loss``, ``notes``. Values are means over samples.

The loss of masking everything at distance >= W (the keys a window W drops) is then
``sum(hist[..., d >= W])`` exactly, which `Profile.window_loss` evaluates for any windows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from moa_plan._files import require_file
from moa_plan.errors import ProfileError
from moa_plan.fingerprint import ModelFingerprint
from moa_plan.io import atomic_write

__all__ = [
    "PROFILE_FORMAT_VERSION",
    "Profile",
    "load_profile",
    "merge_profiles",
    "mix_profiles",
    "save_profile",
    "shape_profile",
]

PROFILE_FORMAT_VERSION = 1
_REQUIRED_META = ("format", "format_version", "fingerprint", "length", "sink", "block", "num_samples")
_FLOATS = (np.float32, np.float64)


@dataclass(frozen=True, kw_only=True)
class Profile:
    """Influence statistics of one model at one length.

    Attributes:
        model: Fingerprint of the profiled model.
        length: Profiled total length N.
        sink: Sink tokens S the statistic excludes.
        block: Block size B of ``block_map``.
        num_samples: Samples averaged.
        hist: ``[L, HQ, K]`` mean influence by distance bucket over non-sink keys.
        sink_influence: ``[L, HQ]`` mean influence on sink keys.
        edges: ``[K + 1]`` bucket edges, or None when bucket k is distance k.
        block_map: ``[L, HQ, nb, nb]`` block influence, or None.
        versions: Package versions that produced the file.
        created_at: ISO time.
        mean_loss: Mean answer-token loss of the samples.
        notes: Free text.
    """

    model: ModelFingerprint
    length: int
    sink: int
    block: int
    num_samples: int
    hist: npt.NDArray[np.floating]
    sink_influence: npt.NDArray[np.floating]
    edges: npt.NDArray[np.int64] | None = None
    block_map: npt.NDArray[np.floating] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    mean_loss: float | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        _validate(self, "profile")

    @property
    def bucket_edges(self) -> npt.NDArray[np.int64]:
        """Bucket edges, ``0..K`` when the histogram is exact."""
        if self.edges is not None:
            return self.edges
        return np.arange(self.hist.shape[-1] + 1, dtype=np.int64)

    def kv_hist(self) -> npt.NDArray[np.float64]:
        """``[L, H, K]``: the histogram summed over each KV head's query-head group."""
        L, HQ, K = self.hist.shape
        group = self.model.group_size
        return self.hist.astype(np.float64).reshape(L, HQ // group, group, K).sum(axis=2)

    def window_loss(self, windows: npt.ArrayLike, *, kv: bool = True) -> npt.NDArray[np.float64]:
        """Estimated loss of windows: influence of non-sink keys at distance >= window.

        Args:
            windows: Windows broadcastable to ``[L, H]`` (``[L, HQ]`` if ``kv`` is False); a
                trailing axis of several windows per head is allowed (``[L, H, R]``).
            kv: Sum over each KV head's group (True) or keep query heads.

        Returns:
            float64 losses of the windows' shape. Within a bucket the mass is taken as spread
            evenly, which is exact when the histogram is exact.
        """
        hist = self.kv_hist() if kv else self.hist.astype(np.float64)
        edges = self.bucket_edges.astype(np.float64)
        # tail[k] = mass of buckets k.. ; evaluate at fractional bucket positions.
        tail = np.concatenate([np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1], np.zeros((*hist.shape[:-1], 1))], -1)
        w = np.asarray(windows, dtype=np.float64)
        extra_axis = w.ndim == hist.ndim
        if not extra_axis:
            w = w[..., None]
        w = np.broadcast_to(w, (*hist.shape[:-1], w.shape[-1]))
        k = np.clip(np.searchsorted(edges, w, side="right") - 1, 0, len(edges) - 2)
        lo, hi = edges[k], edges[k + 1]
        frac = np.clip((w - lo) / (hi - lo), 0.0, 1.0)
        in_bucket = np.take_along_axis(hist, k, axis=-1)
        loss = np.take_along_axis(tail, k, axis=-1) - frac * in_bucket
        loss = np.where(w >= edges[-1], 0.0, loss)
        return loss if extra_axis else loss[..., 0]

    def save(self, path: str | Path) -> Path:
        """Write this profile atomically; see `save_profile`."""
        return save_profile(self, path)


def shape_profile(measured: Profile, shape: Profile, linear: float = 0.0) -> Profile:
    """``measured``'s loss per KV head, spread over distances like ``shape``'s influence.

    A measured profile (one cut per KV head to the sink + one block) knows how much a head's far
    context is worth, not how that worth falls with the window; the influence profile of the same
    length knows the shape. The result keeps, for each KV head, the measured loss at window ``block``
    and makes the loss of a window W the measured loss times the share of the head's influence at
    distances >= W (of the influence at distances >= ``block``); a head without influence there falls
    linearly. Query heads of a group get equal shares.

    ``linear`` in [0, 1] is the part of each head's loss spread evenly over the distances instead
    (the loss at W falls linearly from the block to the whole head): the influence of a head is
    mostly near its diagonal, so the influence shape alone prices a window of N/2 as nearly whole,
    and a head whose answers lie far back is cut too short; ``linear`` = 1 ignores the shape.

    Raises:
        ProfileError: the two profiles differ in model, length, sink, block or buckets, or
            ``linear`` is outside [0, 1].
    """
    if not 0.0 <= linear <= 1.0:
        raise ProfileError(f"the linear share of the shape must be in [0, 1], got {linear}.")
    _require_same_layout(measured, shape, "shape")
    if measured.edges is not None or shape.edges is not None:
        raise ProfileError("shape_profile needs exact (unbucketed) histograms.")
    block = min(measured.block, measured.hist.shape[-1])
    value = measured.kv_hist()[..., block:].sum(axis=-1, keepdims=True)
    weights = shape.kv_hist()
    weights[..., :block] = 0.0
    total = weights.sum(axis=-1, keepdims=True)
    flat = np.zeros_like(weights)
    flat[..., block:] = 1.0 / max(1, weights.shape[-1] - block)
    share = np.where(total > 0, weights / np.where(total > 0, total, 1.0), flat)
    share = (1.0 - linear) * share + linear * flat
    group = measured.model.group_size
    hist = np.repeat(value * share / group, group, axis=1)
    note = (
        f"{measured.notes or 'measured profile'}; shaped by the influence by distance of {shape.notes or 'a profile'}"
    )
    if linear:
        note += f" ({linear:g} of it spread evenly)"
    return Profile(
        model=measured.model,
        length=measured.length,
        sink=measured.sink,
        block=measured.block,
        num_samples=measured.num_samples,
        hist=hist,
        sink_influence=np.asarray(measured.sink_influence, dtype=np.float64),
        versions=dict(measured.versions),
        mean_loss=measured.mean_loss,
        notes=note,
    )


def merge_profiles(profiles: Sequence[Profile]) -> Profile:
    """One profile of the samples of several profiles of the same length: their sample-weighted mean.

    Every value of a profile is a mean over its samples, so the mean weighted by ``num_samples`` is
    the profile of all the samples together: calibration tasks can be profiled one at a time (or one
    added later) and merged. That is exact for the influence and ablation statistics and for a
    one-round greedy profile (each head's cut measured alone); a greedy search of several rounds
    follows one path per calibration set, and the mean of two paths is not the path of their union.

    Raises:
        ProfileError: no profiles, or profiles that differ in model, length, sink, block or buckets.
    """
    if not profiles:
        raise ProfileError("no profiles to merge.")
    first = profiles[0]
    if len(profiles) == 1:
        return first
    for p in profiles[1:]:
        _require_same_layout(first, p, "merge")
    counts = np.array([p.num_samples for p in profiles], dtype=np.float64)
    if counts.sum() <= 0:
        raise ProfileError("cannot merge profiles of no samples.")
    weights = counts / counts.sum()

    def mean(arrays: list[npt.NDArray[np.floating]]) -> npt.NDArray[np.float64]:
        return np.sum([w * np.asarray(a, dtype=np.float64) for w, a in zip(weights, arrays, strict=True)], axis=0)

    maps = [p.block_map for p in profiles]
    losses = [p.mean_loss for p in profiles]
    return Profile(
        model=first.model,
        length=first.length,
        sink=first.sink,
        block=first.block,
        num_samples=int(counts.sum()),
        hist=mean([p.hist for p in profiles]),
        sink_influence=mean([p.sink_influence for p in profiles]),
        edges=first.edges,
        block_map=mean(maps) if all(m is not None for m in maps) else None,  # type: ignore[arg-type]
        versions=dict(first.versions),
        mean_loss=float(np.dot(weights, losses)) if all(x is not None for x in losses) else None,  # type: ignore[arg-type]
        notes="merged: " + "; ".join(f"{p.notes or 'a profile'} ({p.num_samples} samples)" for p in profiles),
    )


def mix_profiles(base: Profile, other: Profile, weight: float = 1.0) -> Profile:
    """One objective of two: ``base`` plus ``other`` scaled to ``weight`` times ``base``'s range.

    Two calibration objectives need not share a scale: a recall task's answer loss moves by nats when
    its heads are cut, a prose continuation's by hundredths. The mix rescales ``other`` so that cutting
    every KV head to the sink + one block (the least any rule keeps, ``window_loss(block)`` summed
    over heads) costs ``weight`` times what it costs in ``base``, then adds it bucket by bucket, so
    that a window's loss in the mix is ``base``'s loss plus the scaled loss of ``other`` for the
    same window. ``weight`` is a prior (1: both objectives count alike), fixed before a plan is
    evaluated.

    Raises:
        ProfileError: a negative weight, profiles that differ in model, length, sink, block or
            buckets, or an ``other`` with no influence beyond one block (nothing to scale).
    """
    if not weight >= 0 or not math.isfinite(weight):
        raise ProfileError(f"the mix weight must be a finite number >= 0, got {weight}.")
    _require_same_layout(base, other, "mix")
    base_range = float(base.window_loss(base.block).sum())
    other_range = float(other.window_loss(other.block).sum())
    if not other_range > 0:
        raise ProfileError("the profile to mix in has no influence beyond one block, so there is nothing to scale.")
    scale = weight * base_range / other_range
    return Profile(
        model=base.model,
        length=base.length,
        sink=base.sink,
        block=base.block,
        num_samples=base.num_samples,
        hist=base.hist.astype(np.float64) + scale * other.hist.astype(np.float64),
        sink_influence=np.asarray(base.sink_influence, dtype=np.float64)
        + scale * np.asarray(other.sink_influence, dtype=np.float64),
        edges=base.edges,
        versions=dict(base.versions),
        mean_loss=base.mean_loss,
        notes=f"{base.notes or 'a profile'}; mixed with {other.notes or 'a profile'} at weight {weight:g}",
    )


def _require_same_layout(a: Profile, b: Profile, verb: str) -> None:
    """Raise unless two profiles can be combined bucket by bucket: one model, length, sink, block and bucket layout."""
    for name in ("length", "sink", "block"):
        if getattr(a, name) != getattr(b, name):
            raise ProfileError(
                f"cannot {verb} profiles of a different {name} ({getattr(a, name)} vs {getattr(b, name)})."
            )
    if a.model != b.model:
        raise ProfileError(f"cannot {verb} profiles of different models.")
    same_edges = (a.edges is None and b.edges is None) or (
        a.edges is not None and b.edges is not None and np.array_equal(a.edges, b.edges)
    )
    if a.hist.shape != b.hist.shape or not same_edges:
        raise ProfileError(f"cannot {verb} profiles with different distance buckets.")


def _validate(p: Profile, source: str) -> None:
    fp = p.model
    for name in ("length", "sink", "block", "num_samples"):
        value = getattr(p, name)
        if not isinstance(value, int | np.integer) or value < (1 if name in ("length", "block") else 0):
            raise ProfileError(
                f"{source}: {name} must be a non-negative integer (length and block >= 1), got {value!r}"
            )
    _check_array(p.hist, "hist", (fp.num_layers, fp.num_attention_heads, None), source)
    _check_array(p.sink_influence, "sink", (fp.num_layers, fp.num_attention_heads), source)
    buckets = p.hist.shape[-1]
    if p.edges is None:
        if buckets != max(p.length - p.sink, 1):
            raise ProfileError(
                f"{source}: hist has {buckets} distance buckets but an exact profile at length "
                f"{p.length} with sink {p.sink} needs {max(p.length - p.sink, 1)}"
            )
    else:
        e = p.edges
        if e.dtype != np.int64 or e.shape != (buckets + 1,):
            raise ProfileError(f"{source}: edges must be int64 of shape [{buckets + 1}], got {e.dtype} {e.shape}")
        if e[0] != 0 or (np.diff(e) <= 0).any():
            raise ProfileError(f"{source}: edges must start at 0 and strictly increase")
    if p.block_map is not None:
        _check_array(p.block_map, "block_map", (fp.num_layers, fp.num_attention_heads, None, None), source)


def _check_array(arr: object, name: str, shape: tuple[int | None, ...], source: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise ProfileError(f"{source}: tensor {name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype.type not in _FLOATS:
        raise ProfileError(f"{source}: tensor {name} must be float32 or float64, got {arr.dtype}")
    expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        raise ProfileError(f"{source}: tensor {name} has shape {list(arr.shape)}, expected {expected}")
    if not np.isfinite(arr).all():
        raise ProfileError(f"{source}: tensor {name} holds NaN or infinite values")
    if (arr < 0).any():
        raise ProfileError(f"{source}: tensor {name} holds negative values; influence magnitudes are >= 0")


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as safetensors atomically."""
    from safetensors.numpy import save_file

    tensors = {"hist": np.ascontiguousarray(profile.hist), "sink": np.ascontiguousarray(profile.sink_influence)}
    if profile.edges is not None:
        tensors["edges"] = np.ascontiguousarray(profile.edges)
    if profile.block_map is not None:
        tensors["block_map"] = np.ascontiguousarray(profile.block_map)
    meta = {
        "format": "moa-profile",
        "format_version": str(PROFILE_FORMAT_VERSION),
        "fingerprint": profile.model.model_dump_json(),
        "length": str(profile.length),
        "sink": str(profile.sink),
        "block": str(profile.block),
        "num_samples": str(profile.num_samples),
        "versions": json.dumps(profile.versions, sort_keys=True),
    }
    if profile.created_at is not None:
        meta["created_at"] = profile.created_at
    if profile.mean_loss is not None:
        meta["mean_loss"] = repr(float(profile.mean_loss))
    if profile.notes is not None:
        meta["notes"] = profile.notes
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_profile(path: str | Path, *, model: ModelFingerprint | None = None) -> Profile:
    """Read and validate a profile file.

    Args:
        path: safetensors file written by `save_profile`.
        model: If given, the profile's fingerprint must match it.

    Raises:
        ProfileError: one sentence naming the file and the problem.
    """
    from safetensors import safe_open

    p = require_file(path, "profile", ProfileError)
    src = str(p)
    try:
        with safe_open(src, framework="numpy") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several unrelated types for corrupt files
        raise ProfileError(f"{src}: not a readable safetensors profile ({exc.__class__.__name__}: {exc})") from None
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ProfileError(f"{src}: profile metadata lacks {', '.join(missing)}")
    if meta["format"] != "moa-profile":
        raise ProfileError(f"{src}: metadata format is {meta['format']!r}, expected 'moa-profile'")
    version = _int(meta, "format_version", src)
    if version > PROFILE_FORMAT_VERSION or version < 1:
        raise ProfileError(
            f"{src}: profile format_version {version} is not one this moa-plan reads (1..{PROFILE_FORMAT_VERSION})"
        )
    unknown = set(tensors) - {"hist", "sink", "edges", "block_map"}
    if unknown:
        raise ProfileError(f"{src}: unknown tensors {sorted(unknown)}")
    for name in ("hist", "sink"):
        if name not in tensors:
            raise ProfileError(f"{src}: profile lacks the tensor {name}")
    try:
        fingerprint = ModelFingerprint.model_validate_json(meta["fingerprint"])
    except ValidationError as exc:
        raise ProfileError(f"{src}: metadata fingerprint is invalid ({exc.errors()[0]['msg']})") from None
    mean_loss = float(meta["mean_loss"]) if "mean_loss" in meta else None
    if mean_loss is not None and not math.isfinite(mean_loss):
        raise ProfileError(f"{src}: metadata mean_loss is not finite")
    try:
        versions = json.loads(meta.get("versions", "{}"))
    except json.JSONDecodeError:
        raise ProfileError(f"{src}: metadata versions is not JSON") from None
    try:
        profile = Profile(
            model=fingerprint,
            length=_int(meta, "length", src),
            sink=_int(meta, "sink", src),
            block=_int(meta, "block", src),
            num_samples=_int(meta, "num_samples", src),
            hist=tensors["hist"],
            sink_influence=tensors["sink"],
            edges=tensors.get("edges"),
            block_map=tensors.get("block_map"),
            versions=versions if isinstance(versions, dict) else {},
            created_at=meta.get("created_at"),
            mean_loss=mean_loss,
            notes=meta.get("notes"),
        )
    except ProfileError as exc:
        raise ProfileError(str(exc).replace("profile:", f"{src}:", 1)) from None
    if model is not None:
        diffs = fingerprint.differences(model)
        if diffs:
            raise ProfileError(f"{src}: profile is for another model: {'; '.join(diffs)}")
    return profile


def _int(meta: dict[str, str], key: str, src: str) -> int:
    try:
        return int(meta[key])
    except ValueError:
        raise ProfileError(f"{src}: metadata {key} must be an integer, got {meta[key]!r}") from None
