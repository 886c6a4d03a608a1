"""Validation: the answer-token loss of each Pareto plan at an unseen length; the lowest wins.

With a perplexity guard (``guard_texts`` and ``max_ppl_increase``) only the plans whose perplexity on
those texts (calibration essays: never the evaluation ones) stays within ``max_ppl_increase`` percent
of dense may win: the lowest answer loss under a perplexity bound, two objectives in one choice.

Resumable per plan: each plan's result is stored under ``OUT/validation/`` keyed by the digest of
the plan file, the validation data and the settings, and reused on a rerun.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moa.evaluate import PlanSpec
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


class NoFeasiblePlanError(MoaError):
    """No plan keeps the perplexity bound; ``rows`` holds every plan's measurements (none is best)."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


def validate_plans(
    model: Any,
    plan_paths: Sequence[Path],
    data_path: Path,
    out_dir: Path,
    *,
    max_samples: int | None = None,
    batch_size: int = 4,
    tokenizer: Any = None,
    guard_texts: Mapping[int, Sequence[str]] | None = None,
    max_ppl_increase: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Score every plan by answer-token loss on the validation set; write ``plan.json`` (the best).

    Args:
        guard_texts: ``{length: texts}`` (e.g. `moa.evaluate.essay_texts` on the calibration side); with
            ``max_ppl_increase`` (percent over dense on these texts) a plan above the bound cannot win.
        tokenizer: the model's tokenizer; needed with ``guard_texts``.

    Returns:
        Rows ``plan, path, loss, density_at_length, length, samples, best`` sorted by loss, and with a
        guard ``ppl_increase`` (percent over dense) and ``feasible``.

    Raises:
        MoaError: if the set is empty, a plan does not fit the model or the guard is half given.
        NoFeasiblePlanError: no plan keeps the perplexity bound (its ``rows`` are the measurements; no
            ``plan.json`` is written).
    """
    from moa.evaluate import answer_loss, essay_perplexity, using_plan
    from moa_profiler import read_calibration

    calibration = read_calibration(data_path)
    samples = calibration.samples[:max_samples] if max_samples else calibration.samples
    if not samples:
        raise MoaError(f"{data_path}: the validation set holds no samples")
    if (guard_texts is None) != (max_ppl_increase is None):
        raise MoaError("a perplexity guard needs both its texts and its bound (max_ppl_increase)")
    if guard_texts is not None and (tokenizer is None or not any(guard_texts.values())):
        raise MoaError("the perplexity guard needs the tokenizer and at least one text")
    fingerprint = ModelFingerprint.from_config(model.config)
    lengths = sorted({s.bucket for s in samples})
    data_digest = file_digest(data_path)
    guard_digest = inputs_digest({"texts": guard_texts}) if guard_texts is not None else None

    def guard_loss(plan: Plan | None) -> float:
        """Mean per-token loss on the guard texts, every length pooled by token."""
        assert guard_texts is not None
        rows = essay_perplexity(model, tokenizer, [PlanSpec("guard", plan)], guard_texts)
        tokens = [r["samples"] * (r["tokens"] - 1) for r in rows]  # predicted tokens, each length pooled
        return sum(r["loss"] * t for r, t in zip(rows, tokens, strict=True)) / sum(tokens)

    dense_guard: list[float] = []  # measured once, and only if some plan is not cached

    def ppl_increase(plan: Plan) -> float:
        if not dense_guard:
            if progress is not None:
                progress("perplexity guard: dense")
            dense_guard.append(guard_loss(None))
        return 100.0 * (math.exp(guard_loss(plan) - dense_guard[0]) - 1.0)

    cache_dir = out_dir / "validation"
    rows = []
    for path in plan_paths:
        plan = Plan.load(path)
        plan.check_compatible(fingerprint)
        key = inputs_digest(
            {"plan": file_digest(path), "data": data_digest, "max_samples": max_samples, "guard": guard_digest}
        )
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
        if guard_texts is not None:
            row["ppl_increase"] = ppl_increase(plan)
        atomic_write_text(cached, json.dumps({"key": key, "row": row}) + "\n")
        rows.append(row)
    rows.sort(key=lambda r: r["loss"])
    if max_ppl_increase is not None:
        for row in rows:
            row["feasible"] = row["ppl_increase"] <= max_ppl_increase
        if not any(r["feasible"] for r in rows):
            for row in rows:
                row["best"] = False
            low = min(rows, key=lambda r: r["ppl_increase"])
            raise NoFeasiblePlanError(
                f"no plan keeps perplexity within +{max_ppl_increase:g}% of dense on the guard texts "
                f"(the lowest: {low['plan']}, +{low['ppl_increase']:.2f}%)",
                rows,
            )
    winner = next(r for r in rows if r.get("feasible", True))
    for row in rows:
        row["best"] = row is winner
    best = Path(winner["path"])
    final = out_dir / "plan.json"
    tmp = out_dir / ".plan.json.tmp"
    shutil.copyfile(best, tmp)
    tmp.replace(final)
    return rows
