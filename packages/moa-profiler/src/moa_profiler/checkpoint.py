"""Atomic checkpoints of partial influence sums, so a killed run restarts where it stopped.

(The greedy search and the gate training, which are not sums over samples, keep their state in a JSON file
instead, read back by `load_state`.)

One safetensors file per (length, rank): float64 sums and, in the metadata, the ids of the
samples already summed, the loss sum and a key of the run settings. Sums and ids are written
in one atomic rename, so they always agree: a sample is either in both or in neither.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moa_plan import atomic_write
from moa_profiler.errors import ProfilerError

__all__ = ["PartialSums", "load_checkpoint", "load_state", "save_checkpoint"]


logger = logging.getLogger(__name__)


def load_state(checkpoint: Path | None, key: str, what: str) -> dict[str, Any]:
    """The JSON state saved under ``key`` at ``checkpoint`` ({} if there is none, it is unreadable, or of another run).

    ``what`` names the run in the warning about a checkpoint of another run ("greedy", "gate").
    """
    if checkpoint is None or not checkpoint.is_file():
        return {}
    try:
        data = json.loads(checkpoint.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("key") != key:
        logger.warning("ignoring %s checkpoint %s of another run", what, checkpoint)
        return {}
    return data


@dataclass
class PartialSums:
    """Sums over the samples in ``done`` (float64).

    Attributes:
        hist: ``[L, HQ, K]``; sink: ``[L, HQ]``; block_map: ``[L, HQ, nb, nb]`` or None.
        loss: Sum of the samples' answer losses.
        done: Ids of the samples summed, in order.
    """

    hist: torch.Tensor
    sink: torch.Tensor
    block_map: torch.Tensor | None = None
    loss: float = 0.0
    done: list[str] = field(default_factory=list)


def save_checkpoint(path: Path, sums: PartialSums, key: str) -> None:
    """Write ``sums`` atomically under ``path`` with the run key ``key``."""
    from safetensors.torch import save_file

    tensors = {"hist": sums.hist.contiguous(), "sink": sums.sink.contiguous()}
    if sums.block_map is not None:
        tensors["block_map"] = sums.block_map.contiguous()
    meta = {"key": key, "loss": repr(sums.loss), "done": json.dumps(sums.done)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path, key: str) -> PartialSums | None:
    """The sums saved under ``path``, or None if there is no checkpoint.

    Raises:
        ProfilerError: if the checkpoint is unreadable or belongs to another run.
    """
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        done = json.loads(meta["done"])
        loss = float(meta["loss"])
    except Exception as exc:  # safetensors and json raise several types for a damaged file
        raise ProfilerError(
            f"{path}: checkpoint is unreadable ({exc.__class__.__name__}); delete it to start over"
        ) from None
    if meta.get("key") != key:
        raise ProfilerError(
            f"{path}: checkpoint belongs to another run (different calibration set, model or settings); "
            "delete it or pass --restart"
        )
    return PartialSums(
        hist=tensors["hist"], sink=tensors["sink"], block_map=tensors.get("block_map"), loss=loss, done=list(done)
    )
