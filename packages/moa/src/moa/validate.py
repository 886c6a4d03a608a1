"""Validation: the answer-token loss of each Pareto plan at an unseen length; the lowest wins.

Resumable per plan: each plan's result is stored under ``OUT/validation/`` keyed by the digest of
the plan file, the validation data and the settings, and reused on a rerun.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moa.manifest import file_digest, inputs_digest
from moa_plan import MoaError, ModelFingerprint, Plan, atomic_write_text

__all__ = ["collect_plans", "validate_plans"]


def collect_plans(paths: Sequence[Path]) -> list[Path]:
    """Plan files from files and directories (``*.json`` inside, sorted); at least one.

    Raises:
        MoaError: if a path is missing or no plan file is found.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.glob("*.json") if p.name not in {"summary.json", "manifest.json"})
        elif path.is_file():
            out.append(path)
        else:
            raise MoaError(f"{path}: no such plan file or directory")
    if not out:
        raise MoaError(f"no plan files found in {', '.join(map(str, paths))}")
    return out


def validate_plans(
    model: Any,
    plan_paths: Sequence[Path],
    data_path: Path,
    out_dir: Path,
    *,
    max_samples: int | None = None,
    batch_size: int = 4,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Score every plan by answer-token loss on the validation set; write ``plan.json`` (the best).

    Returns:
        Rows ``plan, path, loss, density_at_length, length, samples, best`` sorted by loss.
    """
    from moa.evaluate import answer_loss, using_plan
    from moa_profiler import read_calibration

    calibration = read_calibration(data_path)
    samples = calibration.samples[:max_samples] if max_samples else calibration.samples
    if not samples:
        raise MoaError(f"{data_path}: the validation set holds no samples")
    fingerprint = ModelFingerprint.from_config(model.config)
    lengths = sorted({s.bucket for s in samples})
    data_digest = file_digest(data_path)
    cache_dir = out_dir / "validation"
    rows = []
    for path in plan_paths:
        plan = Plan.load(path)
        plan.check_compatible(fingerprint)
        key = inputs_digest({"plan": file_digest(path), "data": data_digest, "max_samples": max_samples})
        cached = cache_dir / f"{path.stem}.json"
        if cached.exists():
            try:
                record = json.loads(cached.read_text())
            except (OSError, ValueError):
                record = {}
            if record.get("key") == key:
                rows.append(record["row"])
                continue
        if progress is not None:
            progress(f"validating {path.name} on {len(samples)} samples at N={lengths}")
        with using_plan(model, plan):
            loss = answer_loss(model, samples, batch_size=batch_size)
        row = {
            "plan": path.stem,
            "path": str(path),
            "loss": loss,
            "length": lengths[-1],
            "density_at_length": plan.density(lengths[-1]),
            "samples": len(samples),
        }
        atomic_write_text(cached, json.dumps({"key": key, "row": row}) + "\n")
        rows.append(row)
    rows.sort(key=lambda r: r["loss"])
    for i, row in enumerate(rows):
        row["best"] = i == 0
    best = Path(rows[0]["path"])
    final = out_dir / "plan.json"
    tmp = out_dir / ".plan.json.tmp"
    shutil.copyfile(best, tmp)
    tmp.replace(final)
    return rows
