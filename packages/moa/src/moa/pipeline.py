"""``moa compress``: calibrate -> profile -> optimize -> validate (-> evaluate), resumable.

Each stage runs the public command of its package in a subprocess (so the pipeline drives
exactly what users run, and a crash in one stage cannot corrupt the others' state) and is
skipped when the manifest records the same inputs and intact outputs. The profiler's own
checkpoints make an interrupted profiling stage resume mid-way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moa.manifest import Manifest, inputs_digest
from moa_plan import MoaError, Plan, atomic_write_text

__all__ = ["CompressSettings", "run_compress"]

# The tasks `moa eval retrieval` scores in the report; calibrating on them would grade the plans
# on their own training data.
EVAL_TASKS = ("lines", "passkey")
STAGES = ["calibrate", "validation-data", "profile", "optimize", "validate", "evaluate"]


@dataclass(frozen=True, kw_only=True)
class CompressSettings:
    """Everything ``moa compress`` needs; part of every stage's input digest."""

    model: Path
    densities: Sequence[float]
    lengths: Sequence[int]
    out: Path
    extend: str = "2x"
    validate_length: int | None = None
    task: str = "rewrite"
    samples: int = 8
    validation_samples: int = 8
    optimizer: str = "builtin"
    time_limit: float = 30.0
    eval_lengths: Sequence[int] = field(default_factory=tuple)
    eval_samples: int = 20
    sink: int = 64
    block: int = 64
    # Also solve the per-layer-only ablation (one rule shared by all heads of a layer) at each
    # budget, validate it the same way and put it in the evaluation beside MoA.
    layer_baseline: bool = True
    # Profile statistic: MoA's first-order influence, or the measured loss of cutting each KV head.
    statistic: str = "influence"
    # Rule-grid resolution of the optimizer (1: the original MoA grid).
    grid_resolution: int = 1

    @property
    def val_length(self) -> int:
        return self.validate_length or round(1.5 * max(self.lengths))


def _tag(density: float) -> str:
    return f"d{density:g}"


def _moa(args: Sequence[object], stage: str, echo: Callable[[str], None]) -> None:
    """Run ``moa ARGS`` in a subprocess; a failure becomes one `MoaError` naming the stage."""
    cmd = [sys.executable, "-m", "moa_plan.cli", *(str(a) for a in args)]
    echo(f"[{stage}] moa {' '.join(map(str, args))}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = re.sub(r"^Error:\s*", "", lines[-1]) if lines else f"exit code {proc.returncode}"
        raise MoaError(f"stage {stage} failed: {last}")


def _stage(
    manifest: Manifest,
    name: str,
    params: dict[str, Any],
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    run: Callable[[], dict[str, Any] | None],
    echo: Callable[[str], None],
) -> None:
    digest = inputs_digest({"stage": name, **params}, inputs)
    if manifest.is_done(name, digest):
        echo(f"[{name}] up to date, skipped")
        return
    manifest.forget_after(name, STAGES)
    summary = run() or {}
    missing = [p for p in outputs if not p.exists()]
    if missing:
        raise MoaError(f"stage {name} finished without writing {missing[0]}")
    manifest.record(name, digest, outputs, summary)


def _check_inputs(s: CompressSettings) -> None:
    if not (s.model / "config.json").is_file():
        raise MoaError(f"{s.model}: not a model directory (no config.json)")
    if not s.densities or any(not 0 < d <= 1 for d in s.densities):
        raise MoaError(f"densities must lie in (0, 1], got {list(s.densities)}")
    if not s.lengths or min(s.lengths) < 2:
        raise MoaError(f"profiled lengths must be >= 2 tokens, got {list(s.lengths)}")
    tasks = [t.strip() for t in s.task.split(",") if t.strip()]
    if not tasks:
        raise MoaError("no calibration task given (--task)")
    clash = sorted(set(tasks) & set(EVAL_TASKS))
    if s.eval_lengths and clash:
        raise MoaError(
            f"calibration task {clash[0]!r} is also an evaluation task; calibrate on another family "
            f"(e.g. rewrite) so the report does not grade plans on their own calibration data"
        )


def run_compress(s: CompressSettings, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; return paths of the final plans and the report text."""
    _check_inputs(s)
    out = s.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(out)
    common = {"settings": {k: str(v) for k, v in asdict(s).items() if k not in ("out",)}}
    lengths = ",".join(map(str, s.lengths))
    calib, valdata, profiles = out / "calibration.parquet", out / "validation.parquet", out / "profiles"

    _stage(
        manifest,
        "calibrate",
        common,
        [s.model],
        [calib],
        lambda: _moa(
            [
                "calibrate",
                "--model",
                s.model,
                "--task",
                s.task,
                "--lengths",
                lengths,
                "--num-samples",
                s.samples,
                "--seed",
                0,
                "--out",
                calib,
                "--quiet",
            ],
            "calibrate",
            echo,
        ),
        echo,
    )
    _stage(
        manifest,
        "validation-data",
        common,
        [s.model],
        [valdata],
        lambda: _moa(
            [
                "calibrate",
                "--model",
                s.model,
                "--task",
                s.task,
                "--lengths",
                s.val_length,
                "--num-samples",
                s.validation_samples,
                "--seed",
                1,
                "--out",
                valdata,
                "--quiet",
            ],
            "validation-data",
            echo,
        ),
        echo,
    )
    profile_files = [profiles / f"profile-{n}.safetensors" for n in s.lengths]
    _stage(
        manifest,
        "profile",
        common,
        [s.model, calib],
        profile_files,
        lambda: _moa(
            [
                "profile",
                calib,
                "--model",
                s.model,
                "--out",
                profiles,
                "--sink",
                s.sink,
                "--block",
                s.block,
                "--statistic",
                s.statistic,
                "--quiet",
            ],
            "profile",
            echo,
        ),
        echo,
    )

    variants = [("", None), *([("layer", 1)] if s.layer_baseline else [])]

    def plan_dir(d: float, variant: str) -> Path:
        return out / _tag(d) / variant if variant else out / _tag(d)

    def optimize() -> None:
        for d in s.densities:
            for variant, max_rules in variants:
                _moa(
                    [
                        "optimize",
                        "--profiles",
                        *profile_files,
                        "--density",
                        d,
                        "--extend",
                        s.extend,
                        "--time-limit",
                        s.time_limit,
                        "--optimizer",
                        s.optimizer,
                        *(["--max-rules-per-layer", max_rules] if max_rules else []),
                        "--grid-resolution",
                        s.grid_resolution,
                        # One solver thread: multi-threaded CP-SAT may return another of several equal-loss
                        # plans, and a resumed pipeline must reproduce the plan of an uninterrupted one.
                        "--threads",
                        1,
                        "--out",
                        plan_dir(d, variant) / "plans",
                    ],
                    "optimize",
                    echo,
                )

    summaries = [plan_dir(d, v) / "plans" / "summary.parquet" for d in s.densities for v, _ in variants]
    _stage(manifest, "optimize", common, profile_files, summaries, optimize, echo)

    finals = [out / _tag(d) / "plan.json" for d in s.densities]
    validated = [plan_dir(d, v) / "plan.json" for d in s.densities for v, _ in variants]

    def validate() -> dict[str, Any]:
        from moa.bench.report import markdown_table, write_parquet
        from moa.evaluate import load_model
        from moa.validate import collect_plans, validate_plans

        model, _ = load_model(s.model)
        result = {}
        for d in s.densities:
            for variant, _ in variants:
                where = plan_dir(d, variant)
                rows = validate_plans(model, collect_plans([where / "plans"]), valdata, where, progress=echo)
                write_parquet(rows, where / "validation.parquet")
                atomic_write_text(
                    where / "validation.md",
                    markdown_table(rows, ["plan", "loss", "density_at_length", "length", "samples", "best"]),
                )
                result["/".join(filter(None, (_tag(d), variant)))] = rows[0]["plan"]
        return result

    plan_inputs = [plan_dir(d, v) / "plans" for d in s.densities for v, _ in variants]
    _stage(manifest, "validate", common, [s.model, valdata, *plan_inputs], validated, validate, echo)

    eval_table = ""
    if s.eval_lengths:
        eval_dir = out / "eval"

        def evaluate() -> None:
            specs = ["dense"]
            for d in s.densities:
                specs += [f"uniform:{d:g}", f"moa-{d:g}={out / _tag(d) / 'plan.json'}"]
                if s.layer_baseline:
                    specs.append(f"layer-{d:g}={plan_dir(d, 'layer') / 'plan.json'}")
            args = [
                "eval",
                "retrieval",
                "--model",
                s.model,
                "--lengths",
                ",".join(map(str, s.eval_lengths)),
                "--samples",
                s.eval_samples,
                "--out",
                eval_dir,
            ]
            for spec in specs:
                args += ["--plan", spec]
            _moa(args, "evaluate", echo)

        _stage(manifest, "evaluate", common, [s.model, *validated], [eval_dir / "retrieval.md"], evaluate, echo)
        eval_table = (eval_dir / "retrieval.md").read_text()

    kinds = [
        (d, "per-layer only" if v else "MoA", plan_dir(d, v) / "plan.json") for d in s.densities for v, _ in variants
    ]
    report = _report(s, kinds, eval_table)
    atomic_write_text(out / "report.md", report)
    return {"plans": [str(p) for p in finals], "plan": str(finals[0]), "report": report}


def _report(s: CompressSettings, finals: Sequence[tuple[float, str, Path]], eval_table: str) -> str:
    lines = [
        f"# moa compress report: {s.model}",
        "",
        f"Profiled lengths {list(s.lengths)}, validation at {s.val_length}, calibration task `{s.task}` "
        f"({s.samples} samples per length and task), profile statistic `{s.statistic}`, optimizer `{s.optimizer}`, extend {s.extend}.",
        "",
    ]
    check = sorted({*s.lengths, s.val_length, *(s.eval_lengths or ())})
    lines += [
        "| budget | final plan | " + " | ".join(f"KV density @{n}" for n in check) + " |",
        "| --- | --- | " + " | ".join("---" for _ in check) + " |",
    ]
    for density, kind, path in finals:
        plan = Plan.load(path)
        lines.append(
            f"| {density:g} {kind} | `{path.relative_to(s.out)}` | "
            + " | ".join(f"{plan.density(n):.3f}" for n in check)
            + " |"
        )
    lines += [
        "",
        "Pareto fronts and span heatmaps: `d*/plans/pareto.png`, `d*/plans/heatmap_*.png`; validation "
        "tables: `d*/validation.md`. The per-layer-only plans (`d*/layer/`, one rule shared by every head of a "
        "layer) are the ablation that shows what per-head spans add.",
    ]
    if eval_table:
        lines += [
            "",
            "## Retrieval accuracy (dense vs uniform vs per-layer only vs MoA)",
            "",
            eval_table,
            "Heatmaps: `eval/retrieval-*.png`.",
        ]
    return "\n".join(lines) + "\n"
