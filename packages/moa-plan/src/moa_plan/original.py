"""Import and export of the original MoA plan format (thu-nics/MoA ``moa_alpha_beta.json``).

That format is ``{"alphas": [[...] per layer], "betas": [[...] per layer]}``, one value per
*query* head, span ``alpha + beta * N`` with the 64 sink tokens inside. On a GQA model a KV
head serves several query heads; importing keeps every query head's tokens by giving the KV
head the largest alpha and the largest beta of its group, a rule whose span is at least each
member's at every length.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from moa_plan._files import read_json_object
from moa_plan.errors import PlanError
from moa_plan.fingerprint import ModelFingerprint
from moa_plan.io import atomic_write_text
from moa_plan.plan import Plan, Provenance, _now

__all__ = ["export_moa_json", "import_moa_json", "read_moa_json"]


def read_moa_json(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``alphas`` and ``betas`` (``[layers, query_heads]`` float arrays) from an original plan."""
    data = read_json_object(path, "original MoA plan", PlanError)
    return _arrays(data, str(path))


def _arrays(data: dict[str, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    unknown = set(data) - {"alphas", "betas"}
    if unknown or "alphas" not in data or "betas" not in data:
        raise PlanError(f"{source}: an original MoA plan holds exactly the keys alphas and betas, got {sorted(data)}")
    arrays = []
    for key in ("alphas", "betas"):
        try:
            arr = np.asarray(data[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise PlanError(f"{source}: {key} must be a rectangular list of lists of numbers") from None
        if arr.ndim != 2 or arr.size == 0:
            raise PlanError(f"{source}: {key} must be a non-empty [layers][heads] list of lists, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise PlanError(f"{source}: {key} holds a non-finite value")
        arrays.append(arr)
    alphas, betas = arrays
    if alphas.shape != betas.shape:
        raise PlanError(f"{source}: alphas has shape {alphas.shape} but betas has {betas.shape}")
    return alphas, betas


def import_moa_json(
    source: str | Path | dict[str, Any],
    model: ModelFingerprint | None = None,
    *,
    sink: int = 64,
    block: int = 64,
) -> Plan:
    """Plan from an original MoA plan (a path or the parsed dict).

    Args:
        source: File path or parsed ``{"alphas", "betas"}`` dict.
        model: Fingerprint of the target model. Without it the plan is bound to an MHA model of
            the file's shape with unrecorded architecture and head size.
        sink: Sink tokens (the original always used 64).
        block: Block size (the original used 64).

    Raises:
        PlanError: if the file is malformed or its shape does not fit ``model``.
    """
    name = "original MoA plan" if isinstance(source, dict) else str(source)
    alphas, betas = _arrays(source, name) if isinstance(source, dict) else read_moa_json(source)
    layers, q_heads = alphas.shape
    if model is None:
        model = ModelFingerprint(num_layers=layers, num_attention_heads=q_heads, num_key_value_heads=q_heads)
    if (layers, q_heads) != (model.num_layers, model.num_attention_heads):
        raise PlanError(
            f"{name}: has {layers} layers x {q_heads} heads but the model has "
            f"{model.num_layers} layers x {model.num_attention_heads} query heads"
        )
    group = model.group_size
    if group > 1:
        grouped_a = alphas.reshape(layers, model.num_key_value_heads, group)
        grouped_b = betas.reshape(layers, model.num_key_value_heads, group)
        differ = int(np.sum((grouped_a.max(-1) != grouped_a.min(-1)) | (grouped_b.max(-1) != grouped_b.min(-1))))
        if differ:
            warnings.warn(
                f"{name}: {differ} KV-head groups have query heads with different rules; each KV head "
                "takes the largest alpha and beta of its group so no query head loses tokens",
                UserWarning,
                stacklevel=2,
            )
        alphas, betas = grouped_a.max(-1), grouped_b.max(-1)
    prov = Provenance(created_at=_now(), method="imported", notes=f"imported from original MoA format: {name}")
    if (betas < 0).any() or (betas > 1).any():
        raise PlanError(f"{name}: betas must lie in [0, 1]")
    return Plan.from_arrays(model, alphas, betas, sink=sink, block=block, provenance=prov)


def export_moa_json(plan: Plan, path: str | Path | None = None) -> dict[str, list[list[float]]]:
    """Original-format dict of ``plan`` (each KV head's rule repeated for its query heads).

    Writes it atomically to ``path`` when given.
    """
    group = plan.model.group_size
    data = {
        "alphas": np.repeat(plan.alphas, group, axis=1).tolist(),
        "betas": np.repeat(plan.betas, group, axis=1).tolist(),
    }
    if path is not None:
        import json

        atomic_write_text(path, json.dumps(data) + "\n")
    return data
