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

# The tasks `moa eval retrieval` can score in the report; calibrating on them would grade the plans
# on their own training data.
EVAL_TASKS = ("lines", "passkey", "niah", "niah-multi", "passkey-en", "lines-en")
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
    # A user's own records (jsonl or Parquet) instead of --task; each document feeds every length.
    records: Path | None = None
    validation_records: Path | None = None
    # Calibration prompt rendering (chat template or plain text) and answer cap.
    template: str = "chat"
    max_new_tokens: int = 64
    # Calibration answers: the model's own (model alignment, MoA) or each record's reference answer.
    answers: str = "model"
    samples: int = 8
    validation_samples: int = 8
    optimizer: str = "builtin"
    time_limit: float = 30.0
    eval_lengths: Sequence[int] = field(default_factory=tuple)
    eval_samples: int = 20
    eval_tasks: str = "lines,passkey"
    sink: int = 64
    block: int = 64
    # Also solve the per-layer-only ablation (one rule shared by all heads of a layer) at each
    # budget, validate it the same way and put it in the evaluation beside MoA.
    layer_baseline: bool = True
    # Also solve the DuoAttention-style ablation: each KV head whole or sink + one fixed local window
    # (`duo_window`), chosen from the same profile at the same budget.
    duo_baseline: bool = True
    # Profile statistic: MoA's first-order influence, or the measured loss of cutting each KV head.
    statistic: str = "influence"
    # The greedy statistic's heads cut per round (0: an eighth) and the fraction of heads it cuts.
    greedy_group: int = 0
    greedy_stop: float = 0.75
    greedy_lazy: bool = False
    # The gate statistic's training steps, Adam learning rate and last L1 penalty (nats per open KV head).
    gate_steps: int = 300
    gate_lr: float = 0.02
    gate_penalty: float = 0.5
    # With a measured or trained statistic (ablation, greedy, gate), also profile MoA's influence on the same
    # calibration set and let the optimizer shape each head's measured cut cost by it (`moa optimize --shape-by`): the
    # measured profile says how much a head's cut costs, the influence profile how that cost falls as its
    # window grows (the shaped plans of RESULTS.md).
    shape: bool = True
    # The part of each head's measured cut cost spread evenly over the distances instead of by the influence
    # (`moa optimize --shape-linear`): the influence sits near the diagonal and prices far-reading heads' long
    # windows too low.
    shape_linear: float = 0.0
    # Rule-grid resolution of the optimizer (1: the original MoA grid).
    grid_resolution: int = 1
    # A second calibration objective (e.g. ``continue``: prose continuation of the calibration essays, its
    # reference answers): profiled with MoA's influence on its own calibration set (``samples`` per length) and
    # added to the first by `moa optimize --mix` at ``mix_weight`` times its range. Empty: none.
    mix_task: str = ""
    mix_weight: float = 1.0
    # The second objective's statistic: MoA's influence, or gates trained on its answers (``gate_steps`` and
    # ``gate_lr`` of the first, last penalty ``mix_gate_penalty``: prose moves by hundredths of a nat, recall by
    # nats), then shaped by its own influence (`moa optimize --mix-shape-by`).
    mix_statistic: str = "influence"
    mix_gate_penalty: float = 0.05
    # Perplexity guard of the validation: only plans within this many percent of dense perplexity on
    # ``validation_samples`` calibration essays cut to the validation length may win (None: no guard).
    max_ppl_increase: float | None = None

    @property
    def val_length(self) -> int:
        return self.validate_length or round(1.5 * max(self.lengths))

    @property
    def calibration_tasks(self) -> list[str]:
        return [] if self.records is not None else [t.strip() for t in self.task.split(",") if t.strip()]

    def duo_window(self, density: float) -> int:
        """The local window of the DuoAttention-style plans at ``density``.

        DuoAttention keeps one global sink + recent size (64 + 256 in its paper) at every length; a budget
        that must hold at the shortest profiled length too leaves the streaming heads at most half of it:
        the largest multiple of the block with ``sink + window <= density * min(lengths) / 2`` (at least one
        block), so that about half the budget there can go to whole heads.
        """
        room = int(density * min(self.lengths) / 2) - self.sink
        return max(self.block, room // self.block * self.block)


# Plan variants solved at each budget: (name, extra `moa optimize` arguments); "" is MoA itself.
def _variants(s: CompressSettings, density: float) -> list[tuple[str, list[object]]]:
    grid: list[object] = ["--grid-resolution", s.grid_resolution]
    if len(set(s.lengths)) == 1:
        # One profiled length says what each head loses at that length only, nothing about how its span
        # should grow: the default grid's offsets would buy "whole at N, fixed beyond" rules that look free
        # there and starve the head at longer inputs (measured on SmolLM2, RESULTS.md). So spans are
        # proportional: alpha 0 (or the sink + one block), beta in eighths of N.
        steps = 8 * s.grid_resolution
        grid = ["--alphas", f"0,{s.sink + s.block}", "--betas", ",".join(f"{i / steps:g}" for i in range(steps + 1))]
    out: list[tuple[str, list[object]]] = [("", grid)]
    if s.layer_baseline:
        out.append(("layer", [*grid, "--max-rules-per-layer", 1]))
    if s.duo_baseline:
        # Whole (0 + 1 x N) or sink + window (S + W + 0 x N): the two rules of the restricted grid. The
        # density of such a plan falls with N, so only the upper bound applies.
        alphas = f"0,{s.sink + s.duo_window(density)}"
        out.append(("duo", ["--alphas", alphas, "--betas", "0,1", "--lower", 0, "--max-rules-per-layer", "none"]))
    return out


_VARIANT_NAMES = {"": "MoA", "layer": "per-layer only", "duo": "DuoAttention-style"}


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
    from moa_plan import resolve_model_source

    # A model directory (config.json, safetensors) or a whole .gguf file; raises one sentence otherwise.
    resolve_model_source(s.model, require_weights=True)
    if not s.densities or any(not 0 < d <= 1 for d in s.densities):
        raise MoaError(f"densities must lie in (0, 1], got {list(s.densities)}")
    if not s.lengths or min(s.lengths) < 2:
        raise MoaError(f"profiled lengths must be >= 2 tokens, got {list(s.lengths)}")
    tasks = [t.strip() for t in s.task.split(",") if t.strip()]
    if s.records is not None:
        from moa_plan._files import require_file

        require_file(s.records, "records", MoaError)
        tasks = []
    elif not tasks:
        raise MoaError("no calibration task given (--task)")
    evaluated = [t.strip() for t in s.eval_tasks.split(",") if t.strip()]
    unknown = sorted(set(evaluated) - set(EVAL_TASKS))
    if s.eval_lengths and unknown:
        raise MoaError(f"unknown evaluation task {unknown[0]!r}; choose from {', '.join(EVAL_TASKS)}")
    mixed = sorted({t.strip() for t in s.mix_task.split(",") if t.strip()} & {*EVAL_TASKS, "essay-ppl"})
    if mixed:
        raise MoaError(
            f"--mix-task {mixed[0]!r} reads evaluation text; mix in a calibration task (e.g. continue) instead"
        )
    clash = sorted(set(tasks) & set(EVAL_TASKS))
    if s.eval_lengths and clash:
        raise MoaError(
            f"calibration task {clash[0]!r} is also an evaluation task; calibrate on another family "
            f"(e.g. rewrite) so the report does not grade plans on their own calibration data"
        )
    if s.max_ppl_increase is not None:
        from moa_plan.assets import read_essays

        # The guard reads the calibration essays at the validate stage: fail now, not after the profile.
        read_essays()


# The settings each stage's result depends on (its input files are hashed besides, so a new calibration
# set re-runs the profile): changing one re-runs that stage and the ones after it, changing another
# stage's setting (e.g. the evaluation lengths) does not re-run this one.
_STAGE_SETTINGS = {
    "calibrate": (
        "model", "lengths", "task", "records", "template", "max_new_tokens", "samples", "answers", "mix_task",
    ),
    "validation-data": (
        "model", "task", "records", "validation_records", "template", "max_new_tokens", "validation_samples",
        "val_length", "answers",
    ),
    "profile": (
        "model", "sink", "block", "statistic", "greedy_group", "greedy_stop", "greedy_lazy", "gate_steps", "gate_lr",
        "gate_penalty", "shape", "mix_task", "mix_statistic", "mix_gate_penalty",
    ),
    "optimize": (
        "densities", "lengths", "extend", "optimizer", "time_limit", "sink", "block", "layer_baseline",
        "duo_baseline", "grid_resolution", "shape", "shape_linear", "mix_task", "mix_weight", "mix_statistic",
    ),
    "validate": (
        "model", "densities", "layer_baseline", "duo_baseline", "max_ppl_increase", "val_length", "validation_samples",
    ),
    "evaluate": ("model", "densities", "layer_baseline", "duo_baseline", "eval_lengths", "eval_samples", "eval_tasks"),
}  # fmt: skip


class _Compress:
    """One ``moa compress`` run: each stage a method, skipped when the manifest says it is up to date."""

    def __init__(self, s: CompressSettings, echo: Callable[[str], None]) -> None:
        self.s, self.echo, self.out = s, echo, s.out
        self.manifest = Manifest.load(s.out)
        self.calib, self.valdata = s.out / "calibration.parquet", s.out / "validation.parquet"
        self.profile_files = [s.out / "profiles" / f"profile-{n}.safetensors" for n in s.lengths]
        shaped = s.shape and s.statistic != "influence"
        self.shape_files = [s.out / "influence" / f"profile-{n}.safetensors" for n in s.lengths] if shaped else []
        self.mix_calib = s.out / "mix-calibration.parquet"
        self.mix_files = [s.out / "mix" / f"profile-{n}.safetensors" for n in s.lengths] if s.mix_task else []
        mix_gated = s.mix_task and s.mix_statistic == "gate"
        self.mix_shape_files = (
            [s.out / "mix-influence" / f"profile-{n}.safetensors" for n in s.lengths] if mix_gated else []
        )
        self.names = [name for name, _ in _variants(s, s.densities[0])]

    def stage(self, name: str, inputs: Sequence[Path], outputs: Sequence[Path], run: Callable[[], Any]) -> None:
        settings = asdict(self.s) | {"val_length": self.s.val_length}
        params = {"settings": {k: str(settings[k]) for k in _STAGE_SETTINGS[name]}}
        _stage(self.manifest, name, params, inputs, outputs, run, self.echo)

    def plan_dir(self, density: float, variant: str = "") -> Path:
        return self.out / _tag(density) / variant if variant else self.out / _tag(density)

    def validated(self) -> list[Path]:
        return [self.plan_dir(d, v) / "plan.json" for d in self.s.densities for v in self.names]

    def _calibrate(self, lengths: str, samples: int, seed: int, records: Path | None, out: Path, stage: str) -> None:
        s = self.s
        source = ["--records", records] if records is not None else ["--task", s.task, "--num-samples", samples]
        args = [*source, "--lengths", lengths, "--seed", seed, "--template", s.template]
        args += ["--max-new-tokens", s.max_new_tokens, "--answers", s.answers, "--skip-unfit", "--out", out, "--quiet"]
        _moa(["calibrate", "--model", s.model, *args], stage, self.echo)

    def calibrate(self) -> None:
        s, inputs = self.s, [self.s.model, *([self.s.records] if self.s.records else [])]
        lengths = ",".join(map(str, s.lengths))

        def run() -> None:
            self._calibrate(lengths, s.samples, 0, s.records, self.calib, "calibrate")
            if s.mix_task:
                # The second objective's own set: plain text and reference answers (a continuation has no
                # question for the model to answer), whatever the first set's template and answers.
                args = ["--task", s.mix_task, "--num-samples", s.samples, "--lengths", lengths, "--seed", 0]
                args += ["--template", "plain", "--answers", "reference", "--skip-unfit", "--out", self.mix_calib]
                _moa(["calibrate", "--model", s.model, *args, "--quiet"], "calibrate", self.echo)

        outputs = [self.calib, *([self.mix_calib] if s.mix_task else [])]
        self.stage("calibrate", inputs, outputs, run)
        records = s.validation_records or s.records
        self.stage(
            "validation-data",
            [s.model, *([records] if records else [])],
            [self.valdata],
            lambda: self._calibrate(
                str(s.val_length), s.validation_samples, 1, records, self.valdata, "validation-data"
            ),
        )

    def profile(self) -> None:
        s = self.s
        args = ["profile", self.calib, "--model", s.model, "--out", self.out / "profiles", "--sink", s.sink]
        args += ["--block", s.block, "--statistic", s.statistic, "--quiet"]
        if s.statistic == "greedy":
            args += ["--greedy-group", s.greedy_group, "--greedy-stop", s.greedy_stop]
            args += ["--greedy-lazy"] if s.greedy_lazy else []
        if s.statistic == "gate":
            args += ["--gate-steps", s.gate_steps, "--gate-lr", s.gate_lr, "--gate-penalty", s.gate_penalty]
        shape = ["profile", self.calib, "--model", s.model, "--out", self.out / "influence", "--sink", s.sink]
        shape += ["--block", s.block, "--statistic", "influence", "--quiet"]

        mix_common = ["profile", self.mix_calib, "--model", s.model, "--sink", s.sink, "--block", s.block, "--quiet"]
        mix = [*mix_common, "--out", self.out / "mix", "--statistic", s.mix_statistic]
        if s.mix_statistic == "gate":
            mix += ["--gate-steps", s.gate_steps, "--gate-lr", s.gate_lr, "--gate-penalty", s.mix_gate_penalty]
        mix_shape = [*mix_common, "--out", self.out / "mix-influence", "--statistic", "influence"]

        def run() -> None:
            _moa(args, "profile", self.echo)
            if self.shape_files:
                _moa(shape, "profile", self.echo)
            if self.mix_files:
                _moa(mix, "profile", self.echo)
            if self.mix_shape_files:
                _moa(mix_shape, "profile", self.echo)

        inputs = [s.model, self.calib, *([self.mix_calib] if s.mix_task else [])]
        outputs = [*self.profile_files, *self.shape_files, *self.mix_files, *self.mix_shape_files]
        self.stage("profile", inputs, outputs, run)

    def optimize(self) -> None:
        s = self.s

        def run() -> None:
            for d in s.densities:
                for variant, extra in _variants(s, d):
                    args = ["optimize", "--profiles", *self.profile_files, "--density", d, "--extend", s.extend]
                    args += ["--time-limit", s.time_limit, "--optimizer", s.optimizer, *extra]
                    args += [x for f in self.shape_files for x in ("--shape-by", f)]
                    args += ["--shape-linear", s.shape_linear] if self.shape_files and s.shape_linear else []
                    args += [x for f in self.mix_files for x in ("--mix", f)]
                    args += [x for f in self.mix_shape_files for x in ("--mix-shape-by", f)]
                    args += ["--mix-weight", s.mix_weight] if self.mix_files else []
                    # One solver thread: multi-threaded CP-SAT may return another of several equal-loss
                    # plans, and a resumed pipeline must reproduce the plan of an uninterrupted one.
                    args += ["--threads", 1, "--out", self.plan_dir(d, variant) / "plans"]
                    _moa(args, "optimize", self.echo)

        summaries = [self.plan_dir(d, v) / "plans" / "summary.parquet" for d in s.densities for v in self.names]
        inputs = [*self.profile_files, *self.shape_files, *self.mix_files, *self.mix_shape_files]
        self.stage("optimize", inputs, summaries, run)

    def validate(self) -> None:
        s = self.s

        def run() -> dict[str, Any]:
            from moa.bench.report import markdown_table, write_parquet
            from moa.evaluate import essay_texts, load_model
            from moa.validate import collect_plans, validate_plans

            model, tokenizer = load_model(s.model)
            texts = None
            if s.max_ppl_increase is not None:
                from moa_plan.assets import read_essays

                texts = essay_texts(tokenizer, read_essays(), [s.val_length], s.validation_samples, side="calibration")
            guard = ["ppl_increase", "feasible"] if texts is not None else []
            result = {}
            for d in s.densities:
                for variant in self.names:
                    where = self.plan_dir(d, variant)
                    rows = validate_plans(
                        model, collect_plans([where / "plans"]), self.valdata, where, tokenizer=tokenizer,
                        guard_texts=texts, max_ppl_increase=s.max_ppl_increase, progress=self.echo,
                    )  # fmt: skip
                    write_parquet(rows, where / "validation.parquet")
                    columns = ["plan", "loss", *guard, "density_at_length", "length", "samples", "best"]
                    atomic_write_text(where / "validation.md", markdown_table(rows, columns))
                    result["/".join(filter(None, (_tag(d), variant)))] = next(r["plan"] for r in rows if r["best"])
            return result

        plan_inputs = [self.plan_dir(d, v) / "plans" for d in s.densities for v in self.names]
        self.stage("validate", [s.model, self.valdata, *plan_inputs], self.validated(), run)

    def evaluate(self) -> str:
        s = self.s
        if not s.eval_lengths:
            return ""
        eval_dir = self.out / "eval"

        def run() -> None:
            specs = ["dense"]
            for d in s.densities:
                specs.append(f"uniform:{d:g}")
                for variant in self.names:
                    specs.append(f"{variant or 'moa'}-{d:g}={self.plan_dir(d, variant) / 'plan.json'}")
            args = ["eval", "retrieval", "--model", s.model, "--tasks", s.eval_tasks]
            args += ["--lengths", ",".join(map(str, s.eval_lengths)), "--samples", s.eval_samples, "--out", eval_dir]
            for spec in specs:
                args += ["--plan", spec]
            _moa(args, "evaluate", self.echo)

        self.stage("evaluate", [s.model, *self.validated()], [eval_dir / "retrieval.md"], run)
        return (eval_dir / "retrieval.md").read_text()


def run_compress(s: CompressSettings, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; return paths of the final plans and the report text."""
    _check_inputs(s)
    s.out.mkdir(parents=True, exist_ok=True)
    run = _Compress(s, echo)
    run.calibrate()
    run.profile()
    run.optimize()
    run.validate()
    eval_table = run.evaluate()
    kinds = [(d, _VARIANT_NAMES[v], run.plan_dir(d, v) / "plan.json") for d in s.densities for v in run.names]
    report = _report(s, kinds, eval_table)
    atomic_write_text(s.out / "report.md", report)
    finals = [run.plan_dir(d) / "plan.json" for d in s.densities]
    return {"plans": [str(p) for p in finals], "plan": str(finals[0]), "report": report}


def _validation_loss(plan_dir: Path) -> str:
    """The validation loss of the plan chosen in ``plan_dir/validation.parquet`` ("-" when absent).

    That is the row marked ``best``: the lowest loss, or with a perplexity guard the lowest among the plans within it.
    """
    import polars as pl

    table = plan_dir / "validation.parquet"
    if not table.is_file():
        return "-"
    frame = pl.read_parquet(table)
    if "loss" not in frame.columns or frame.height == 0:
        return "-"
    if "best" in frame.columns and frame["best"].any():
        frame = frame.filter(pl.col("best"))
    return f"{min(float(v) for v in frame['loss'].to_list()):.3f}"


def _report(s: CompressSettings, finals: Sequence[tuple[float, str, Path]], eval_table: str) -> str:
    lines = [
        f"# moa compress report: {s.model}",
        "",
        f"Profiled lengths {list(s.lengths)}, validation at {s.val_length}, calibration "
        + (f"records `{s.records}`" if s.records else f"task `{s.task}` ({s.samples} samples per length and task)")
        + f", profile statistic `{s.statistic}`"
        + (" shaped by the influence profile" if s.shape and s.statistic != "influence" else "")
        + (
            f" ({s.shape_linear:g} of it spread evenly)"
            if s.shape and s.statistic != "influence" and s.shape_linear
            else ""
        )
        + (
            f", mixed with `{s.mix_task}` ({s.mix_statistic}"
            + (" shaped by its influence" if s.mix_statistic == "gate" else "")
            + f") at weight {s.mix_weight:g}"
            if s.mix_task
            else ""
        )
        + f", calibration answers `{s.answers}`, optimizer `{s.optimizer}`, extend {s.extend}.",
        "",
    ]
    check = sorted({*s.lengths, s.val_length, *(s.eval_lengths or ())})
    lines += [
        f"| budget | final plan | validation loss @{s.val_length} | "
        + " | ".join(f"KV density @{n}" for n in check)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in check) + " |",
    ]
    for density, kind, path in finals:
        plan = Plan.load(path)
        lines.append(
            f"| {density:g} {kind} | `{path.relative_to(s.out)}` | {_validation_loss(path.parent)} | "
            + " | ".join(f"{plan.density(n):.3f}" for n in check)
            + " |"
        )
    lines += [
        "",
        "Pareto fronts and span heatmaps: `d*/plans/pareto.png`, `d*/plans/heatmap_*.png`; validation "
        "tables: `d*/validation.md` (answer loss of held-out calibration-task samples at the unseen length; "
        "the final plan is the Pareto point with the lowest).",
    ]
    if s.layer_baseline or s.duo_baseline:
        lines.append(
            "The per-layer-only plans (`d*/layer/`, one rule shared by every head of a layer) and the "
            "DuoAttention-style plans (`d*/duo/`, each KV head whole or sink + one fixed local window) are the "
            "ablations that show what per-head elastic spans add; all are solved from the same profile at the same "
            "budget."
        )
    if eval_table:
        lines += [
            "",
            "## Retrieval accuracy (dense vs uniform vs per-layer only vs DuoAttention-style vs MoA)",
            "",
            eval_table,
            "Heatmaps: `eval/retrieval-*.png`.",
        ]
    return "\n".join(lines) + "\n"
