"""Profile one length over a calibration set: shard samples over ranks, checkpoint, all-reduce, save."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from moa_plan import ModelFingerprint, Profile, atomic_write_text, save_profile
from moa_profiler.checkpoint import PartialSums, load_checkpoint, save_checkpoint
from moa_profiler.dataset import CalibrationSample
from moa_profiler.distributed import World, all_reduce_sum, barrier
from moa_profiler.errors import ProfilerError
from moa_profiler.memory import peak_rss_mib
from moa_profiler.models import input_device
from moa_profiler.sample import InfluenceSettings, ablate_sample, monotone_ablation, profile_sample

__all__ = ["LengthSummary", "RunSettings", "profile_length"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """One profiling run.

    Attributes:
        influence: Sink, block, block map, chunking.
        checkpoint_dir: Where partial sums go (None: no checkpoints).
        checkpoint_every: Samples between checkpoints.
        restart: Ignore existing checkpoints.
        progress: Show a progress bar (rank 0).
        versions: Package versions recorded in the profile.
        greedy_from: Start the greedy search from a saved path: a ``profile-<N>.greedy.json`` (one length)
            or a directory of them (see `moa_profiler.greedy.load_greedy_path`).
        gate_from: Take the gates of an earlier training instead of training them: a ``profile-<N>.gates.json``
            or a directory of them (see `moa_profiler.gate.load_gate_run`); no forward pass.
    """

    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 4
    restart: bool = False
    progress: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    greedy_from: Path | None = None
    gate_from: Path | None = None


@dataclass(frozen=True)
class LengthSummary:
    """What a length's run produced (for the summary table and ``--json``)."""

    length: int
    samples: int
    mean_loss: float
    sink_share: float
    median_distance: int
    seconds: float
    peak_rss_mib: float
    path: str


def _key(
    fp: ModelFingerprint, samples: Sequence[CalibrationSample], length: int, s: InfluenceSettings, world: World
) -> str:
    digest = hashlib.sha256(_samples_digest(samples).encode())
    digest.update(
        json.dumps(
            [fp.model_dump(), length, s.sink, s.block, s.block_map, str(s.dtype), world.rank, world.size]
            + ([s.statistic, s.ablation_points] if s.statistic != "influence" else [])
            + ([s.greedy_group, s.greedy_stop] if s.statistic == "greedy" else [])
            + (["lazy"] if s.statistic == "greedy" and s.greedy_lazy else [])
            + ([s.gate_steps, s.gate_lr, s.gate_penalty, s.gate_seed] if s.statistic == "gate" else [])
        ).encode()
    )
    return digest.hexdigest()


def _samples_digest(samples: Sequence[CalibrationSample]) -> str:
    """sha256 of the samples' ids, tokens and answer spans (which samples a greedy path was measured on)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.sample_id.encode())
        digest.update(np.asarray(sample.input_ids, dtype=np.int64).tobytes())
        digest.update(f"{sample.answer_start}:{sample.answer_end};".encode())
    return digest.hexdigest()


def _tensors(samples: Sequence[CalibrationSample], device: torch.device) -> list[tuple[torch.Tensor, int, int]]:
    """``(ids, answer start, answer stop)`` of each sample, ids on ``device`` (what the greedy and gate runs take)."""
    return [(torch.tensor(x.input_ids, dtype=torch.long, device=device), x.answer_start, x.answer_end) for x in samples]


def _zeros(fp: ModelFingerprint, length: int, s: InfluenceSettings) -> PartialSums:
    L, HQ = fp.num_layers, fp.num_attention_heads
    nb = -(-length // s.block)
    return PartialSums(
        hist=torch.zeros(L, HQ, max(length - s.sink, 1), dtype=torch.float64),
        sink=torch.zeros(L, HQ, dtype=torch.float64),
        block_map=torch.zeros(L, HQ, nb, nb, dtype=torch.float64) if s.block_map else None,
    )


def profile_length(
    model: torch.nn.Module,
    fingerprint: ModelFingerprint,
    samples: Sequence[CalibrationSample],
    length: int,
    out: Path,
    settings: RunSettings,
    world: World | None = None,
) -> LengthSummary:
    """Profile ``samples`` (all of length ``length``) and write the mean profile to ``out`` (rank 0).

    Rank r of W takes samples r, r + W, ...; each rank checkpoints its float64 partial sums and
    finished sample ids every ``checkpoint_every`` samples, and resumes from them.

    Raises:
        ProfilerError: no samples, a sample of another length, a non-finite loss, or a foreign checkpoint.
    """
    world = world or World()
    s = settings.influence
    if not samples:
        raise ProfilerError(f"the calibration set has no sample of length {length}")
    for sample in samples:
        if len(sample.input_ids) != length:
            raise ProfilerError(f"sample {sample.sample_id} has {len(sample.input_ids)} tokens, not {length}")
    started = time.perf_counter()
    device = input_device(model)
    mine = list(samples[world.rank :: world.size])
    key = _key(fingerprint, samples, length, s, world)
    ckpt = None
    if settings.checkpoint_dir is not None:
        ckpt = settings.checkpoint_dir / f"profile-{length}.rank{world.rank}-of-{world.size}.ckpt.safetensors"
    sums = None if ckpt is None or settings.restart else load_checkpoint(ckpt, key)
    sums = sums or _zeros(fingerprint, length, s)
    if s.statistic == "greedy":
        _greedy(model, fingerprint, mine, sums, settings, world, device, ckpt, key, length, out)
        return _finish(fingerprint, length, sums, out, settings, world, device, started, None)
    if s.statistic == "gate":
        _gate(model, fingerprint, mine, sums, settings, world, device, ckpt, key, length, out)
        return _finish(fingerprint, length, sums, out, settings, world, device, started, None)
    if sums.done:
        logger.info("length %d rank %d: resuming after %d samples", length, world.rank, len(sums.done))
    _accumulate(model, mine, sums, settings, world, device, ckpt, key, f"profile {length}")
    return _finish(fingerprint, length, sums, out, settings, world, device, started, ckpt)


def _greedy(
    model: torch.nn.Module,
    fp: ModelFingerprint,
    mine: Sequence[CalibrationSample],
    sums: PartialSums,
    settings: RunSettings,
    world: World,
    device: torch.device,
    ckpt: Path | None,
    key: str,
    length: int,
    out: Path,
) -> None:
    """The greedy search over all samples at once (it is not a per-sample sum): one rank only."""
    from moa_profiler.greedy import ablation_histogram, greedy_path, load_greedy_path

    if world.size > 1:
        raise ProfilerError("the greedy statistic measures all samples together; run it in one process, not torchrun")
    s = settings.influence
    measured = {"length": length, "sink": s.sink, "block": s.block, "samples": _samples_digest(mine)}
    start = None
    if settings.greedy_from is not None:
        seed = settings.greedy_from
        seed = seed / f"profile-{length}.greedy.json" if seed.is_dir() else seed
        start = load_greedy_path(seed, layers=fp.num_layers, kv_heads=fp.num_key_value_heads, expect=measured)
        key = hashlib.sha256(f"{key}:{json.dumps(start.to_json())}".encode()).hexdigest()
    samples = _tensors(mine, device)
    show = settings.progress and world.is_main
    path = greedy_path(
        model,
        samples,
        settings.influence,
        checkpoint=None if ckpt is None else ckpt.with_suffix(".greedy.json"),
        key=key,
        progress=(lambda m: tqdm.write(m)) if show else (lambda m: logger.info("%s", m)),
        start=start,
    )
    hist = ablation_histogram(
        path.values, fp.num_layers, fp.num_attention_heads, fp.num_key_value_heads, length, settings.influence
    )
    count = len(samples)
    sums.hist = hist * count
    sums.loss = path.losses[0] * count
    sums.done = [x.sample_id for x in mine]
    if world.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {**path.to_json(), **measured}
        atomic_write_text(out.with_name(out.stem + ".greedy.json"), json.dumps(record) + "\n")
    if ckpt is not None:
        ckpt.with_suffix(".greedy.json").unlink(missing_ok=True)


def _gate(
    model: torch.nn.Module,
    fp: ModelFingerprint,
    mine: Sequence[CalibrationSample],
    sums: PartialSums,
    settings: RunSettings,
    world: World,
    device: torch.device,
    ckpt: Path | None,
    key: str,
    length: int,
    out: Path,
) -> None:
    """Train the gates on all samples at once (one run, not a per-sample sum): one rank only."""
    from moa_profiler.gate import load_gate_run, train_gates
    from moa_profiler.greedy import ablation_histogram

    if world.size > 1:
        raise ProfilerError("the gate statistic trains on all samples together; run it in one process, not torchrun")
    s = settings.influence
    samples = _tensors(mine, device)
    show = settings.progress and world.is_main
    if settings.gate_from is not None:
        seed = settings.gate_from
        seed = seed / f"profile-{length}.gates.json" if seed.is_dir() else seed
        expect = {"length": length, "sink": s.sink, "block": s.block, "samples": _samples_digest(mine)}
        expect |= {"steps": s.gate_steps, "lr": s.gate_lr, "penalty": s.gate_penalty, "seed": s.gate_seed}
        run = load_gate_run(seed, layers=fp.num_layers, kv_heads=fp.num_key_value_heads, expect=expect)
    else:
        run = train_gates(
            model,
            samples,
            s,
            checkpoint=None if ckpt is None else ckpt.with_suffix(".gate.json"),
            key=key,
            progress=(lambda m: tqdm.write(m)) if show else (lambda m: logger.info("%s", m)),
        )
    hist = ablation_histogram(run.values, fp.num_layers, fp.num_attention_heads, fp.num_key_value_heads, length, s)
    count = len(samples)
    sums.hist = hist * count
    sums.loss = sum(run.losses) / len(run.losses) * count
    sums.done = [x.sample_id for x in mine]
    if world.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **run.to_json(),
            "length": length,
            "sink": s.sink,
            "block": s.block,
            "samples": _samples_digest(mine),
            "steps": s.gate_steps,
            "lr": s.gate_lr,
            "penalty": s.gate_penalty,
            "seed": s.gate_seed,
        }
        atomic_write_text(out.with_name(out.stem + ".gates.json"), json.dumps(record) + "\n")
    if ckpt is not None:
        ckpt.with_suffix(".gate.json").unlink(missing_ok=True)


def _accumulate(
    model: torch.nn.Module,
    mine: Sequence[CalibrationSample],
    sums: PartialSums,
    settings: RunSettings,
    world: World,
    device: torch.device,
    ckpt: Path | None,
    key: str,
    desc: str,
) -> None:
    """Add this rank's unfinished samples to ``sums``, checkpointing every few samples."""
    done = set(sums.done)
    show = settings.progress and world.is_main
    bar = tqdm(total=len(mine), initial=len(done), desc=desc, unit="sample", disable=not show)
    unsaved = 0
    measure = ablate_sample if settings.influence.statistic == "ablation" else profile_sample
    for sample in mine:
        if sample.sample_id in done:
            continue
        ids = torch.tensor(sample.input_ids, dtype=torch.long, device=device)
        try:
            result = measure(model, ids, sample.answer_start, sample.answer_end, settings.influence)
        except ProfilerError as exc:
            raise ProfilerError(f"sample {sample.sample_id} (length {len(sample.input_ids)}): {exc}") from None
        sums.hist += result.hist
        sums.sink += result.sink
        if sums.block_map is not None and result.block_map is not None:
            sums.block_map += result.block_map
        sums.loss += result.loss
        sums.done.append(sample.sample_id)
        done.add(sample.sample_id)
        unsaved += 1
        bar.update(1)
        if ckpt is not None and unsaved >= settings.checkpoint_every:
            save_checkpoint(ckpt, sums, key)
            unsaved = 0
    bar.close()
    if ckpt is not None and unsaved:
        save_checkpoint(ckpt, sums, key)


def _finish(
    fp: ModelFingerprint,
    length: int,
    sums: PartialSums,
    out: Path,
    settings: RunSettings,
    world: World,
    device: torch.device,
    started: float,
    ckpt: Path | None,
) -> LengthSummary:
    comm = device if world.size > 1 and device.type == "cuda" else torch.device("cpu")
    hist = all_reduce_sum(sums.hist, world, comm)
    sink = all_reduce_sum(sums.sink, world, comm)
    block_map = all_reduce_sum(sums.block_map, world, comm) if sums.block_map is not None else None
    totals = all_reduce_sum(torch.tensor([sums.loss, float(len(sums.done))], dtype=torch.float64), world, comm)
    count = round(float(totals[1]))
    mean_loss = float(totals[0]) / count
    s = settings.influence
    mean_hist = hist / count
    if s.statistic == "ablation":
        mean_hist = monotone_ablation(mean_hist, length, s)
    notes = {
        "ablation": "moa-profiler: mean over samples of the measured answer-loss increase of cutting each KV head "
        f"(ablation, up to {s.ablation_points} windows per head), as a distance histogram",
        "greedy": "moa-profiler: greedy search, each KV head's measured marginal answer-loss increase of being cut to "
        "the sink + one block on top of the heads cut before it, as a one-window distance histogram",
        "gate": "moa-profiler: gate training, each KV head's price of being cut to the sink + one block (the L1 "
        f"penalty its gate withstood, growing to {s.gate_penalty} nats/head over {s.gate_steps} steps), as a "
        "one-window distance histogram; mean_loss is the mean answer loss over the steps",
    }
    profile = Profile(
        model=fp,
        length=length,
        sink=s.sink,
        block=s.block,
        num_samples=count,
        hist=mean_hist.numpy(),
        sink_influence=(sink / count).numpy(),
        block_map=(block_map / count).numpy() if block_map is not None else None,
        versions=settings.versions,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mean_loss=mean_loss,
        notes=notes.get(
            s.statistic, "moa-profiler: mean over samples of |E| summed by key distance; answer-token cross-entropy"
        ),
    )
    if world.is_main:
        save_profile(profile, out)
    barrier(world)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
        if world.is_main and ckpt.parent.is_dir() and not any(ckpt.parent.iterdir()):
            # Another rank may still be removing its file; an empty directory left behind is harmless.
            with contextlib.suppress(OSError):
                ckpt.parent.rmdir()
    total = float(mean_hist.sum() * count + sink.sum())
    cumulative = mean_hist.sum(dim=(0, 1)).cumsum(0)
    median = int(torch.searchsorted(cumulative, cumulative[-1] / 2).item()) if float(cumulative[-1]) > 0 else 0
    return LengthSummary(
        length=length,
        samples=count,
        mean_loss=mean_loss,
        sink_share=float(sink.sum()) / total if total > 0 else 0.0,
        median_distance=median,
        seconds=time.perf_counter() - started,
        peak_rss_mib=peak_rss_mib(),
        path=str(out),
    )
