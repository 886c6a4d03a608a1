"""``moa eval``, ``moa validate`` and ``moa compress``: the umbrella's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from moa_plan import ModelFingerprint, atomic_write_text
from moa_plan.cli import LengthList

__all__ = ["compress", "eval_group", "validate"]


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.group("eval")
def eval_group() -> None:
    """Evaluate plans side by side (dense, uniform, MoA) at the same KV budget."""


@eval_group.command("retrieval")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option(
    "--plan",
    "plans",
    multiple=True,
    default=["dense"],
    show_default=True,
    help="dense | uniform:FRACTION | head:LAYER.KV_HEAD (that KV head dense, the others sink + one block) "
    "| heads (one such probe per KV head) | [NAME=]PLAN.json; repeatable.",
)
@click.option("--tasks", default="lines,passkey", show_default=True)
@click.option("--lengths", type=LengthList(), default="512,1024,2048", show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Records per (task, length), spread over the 10 depth deciles.",
)
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--json", "as_json", is_flag=True)
def retrieval(
    model_path: Path,
    plans: tuple[str, ...],
    tasks: str,
    lengths: list[int],
    samples: int,
    seed: int,
    batch_size: int,
    out: Path,
    as_json: bool,
) -> None:
    """Retrieval accuracy (lines, passkey) by length x depth decile, per plan."""
    from moa.evaluate import effective_context, load_model, parse_plan_specs, retrieval_eval
    from moa.report import retrieval_outputs

    model, tokenizer = load_model(model_path)
    specs = parse_plan_specs(plans, ModelFingerprint.from_config(model.config))
    rows = retrieval_eval(
        model,
        tokenizer,
        specs,
        tasks=[t for t in tasks.split(",") if t],
        lengths=lengths,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        progress=_echo_err,
    )
    table = retrieval_outputs(rows, out)
    eff = effective_context(rows)
    if as_json:
        click.echo(json.dumps({"rows": rows, "effective_context": eff}))
        return
    click.echo(table)
    click.echo(
        "effective context length (>= 90% retrieval): "
        + ", ".join(f"{k} {v if v is not None else '< ' + str(min(lengths))}" for k, v in eff.items())
    )


@eval_group.command("ppl")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--plan", "plans", multiple=True, default=["dense"], show_default=True)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Calibration-format Parquet.")
@click.option("--max-samples", type=click.IntRange(min=1))
@click.option("--out", type=click.Path(path_type=Path), help="Also write ppl.parquet and ppl.md here.")
@click.option("--json", "as_json", is_flag=True)
def ppl(
    model_path: Path, plans: tuple[str, ...], data: Path, max_samples: int | None, out: Path | None, as_json: bool
) -> None:
    """Perplexity on the answer tokens of a calibration-format dataset, per plan."""
    import math

    from moa.bench.report import markdown_table, write_parquet
    from moa.evaluate import answer_loss, load_model, parse_plan_specs, using_plan
    from moa_profiler import read_calibration

    model, _ = load_model(model_path)
    specs = parse_plan_specs(plans, ModelFingerprint.from_config(model.config))
    samples = read_calibration(data).samples[:max_samples]
    rows = []
    for spec in specs:
        with using_plan(model, spec.plan):
            loss = answer_loss(model, samples)
        rows.append({"plan": spec.name, "loss": loss, "ppl": math.exp(loss), "samples": len(samples)})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(rows, out / "ppl.parquet")
        atomic_write_text(out / "ppl.md", markdown_table(rows, ["plan", "loss", "ppl", "samples"]))
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['plan']:>20}  loss {r['loss']:.4f}  ppl {r['ppl']:.3f}")


@eval_group.command("task")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option(
    "--plan", "plans", multiple=True, default=["dense"], show_default=True, help="As for `moa eval retrieval`."
)
@click.option(
    "--records",
    required=True,
    type=click.Path(path_type=Path),
    help="Records with reference answers (.jsonl moa_plan records, or Parquet with context/question/answer).",
)
@click.option("--max-samples", type=click.IntRange(min=1), help="Evaluate only the first N records.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--json", "as_json", is_flag=True)
def task(
    model_path: Path,
    plans: tuple[str, ...],
    records: Path,
    max_samples: int | None,
    max_new_tokens: int,
    batch_size: int,
    out: Path,
    as_json: bool,
) -> None:
    """Greedy answers to a records file, per plan: exact match, contains and word F1 by task."""
    from moa.bench.report import markdown_table, write_parquet
    from moa.evaluate import load_model, parse_plan_specs, task_eval, task_summary
    from moa_profiler.records import load_records

    recs = load_records(records)[:max_samples]
    model, tokenizer = load_model(model_path)
    specs = parse_plan_specs(plans, ModelFingerprint.from_config(model.config))
    rows = task_eval(
        model, tokenizer, specs, recs, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=_echo_err
    )
    summary = task_summary(rows)
    table = markdown_table(
        summary, ["task", "plan", "exact", "contains", "f1", "records", "prompt_tokens", "kv_density"]
    )
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out / "answers.parquet")
    write_parquet(summary, out / "task.parquet")
    atomic_write_text(out / "task.md", table)
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(table)


@click.command("validate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option(
    "--plans",
    "plan_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Plan files or directories of plans; repeatable.",
)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Validation set (calibration Parquet).")
@click.option("--max-samples", type=click.IntRange(min=1))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def validate(
    model_path: Path, plan_paths: tuple[Path, ...], data: Path, max_samples: int | None, out: Path, as_json: bool
) -> None:
    """Pick the plan with the lowest answer-token loss at an unseen length; write OUT/plan.json."""
    from moa.bench.report import markdown_table, write_parquet
    from moa.evaluate import load_model
    from moa.validate import collect_plans, validate_plans

    plans = collect_plans(list(plan_paths))
    model, _ = load_model(model_path)
    rows = validate_plans(model, plans, data, out, max_samples=max_samples, progress=_echo_err)
    write_parquet(rows, out / "validation.parquet")
    table = markdown_table(rows, ["plan", "loss", "density_at_length", "length", "samples", "best"])
    atomic_write_text(out / "validation.md", table)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(table)
    click.echo(f"wrote {out / 'plan.json'} (from {rows[0]['plan']})")


@click.command("compress")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--density", "densities", required=True, help="KV density budget(s), comma-separated (e.g. 0.5,0.25).")
@click.option("--lengths", type=LengthList(), default="512,1024", show_default=True, help="Profiled lengths.")
@click.option("--extend", default="2x", show_default=True, help="Also constrain density at this multiple (or length).")
@click.option("--validate-length", type=int, help="Unseen validation length (default: 1.5x the longest profiled).")
@click.option(
    "--task",
    default="rewrite",
    show_default=True,
    help="Calibration task(s) of moa_plan.tasks, comma-separated; not an evaluation task (lines, passkey).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Calibration samples per length and task.",
)
@click.option("--validation-samples", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--optimizer", default="builtin", show_default=True, help="Name in the entry-point group moa.optimizers.")
@click.option("--time-limit", type=float, default=30.0, show_default=True, help="Seconds per solve.")
@click.option("--eval-lengths", type=LengthList(), help="Also evaluate retrieval (dense/uniform/MoA) at these lengths.")
@click.option("--eval-samples", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--sink", type=click.IntRange(min=0), default=64, show_default=True, help="Sink tokens S of the plans.")
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True, help="Block size B of the plans.")
@click.option(
    "--statistic",
    type=click.Choice(["influence", "ablation"]),
    default="influence",
    show_default=True,
    help="Profile statistic (see moa profile --help): MoA's first-order influence or measured head cuts.",
)
@click.option(
    "--grid-resolution",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Divide the optimizer's rule-grid steps by this (1: the original MoA grid).",
)
@click.option(
    "--layer-baseline/--no-layer-baseline",
    default=True,
    show_default=True,
    help="Also solve, validate and evaluate per-layer-only plans (one rule per layer) at each budget.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def compress(
    model_path: Path,
    densities: str,
    lengths: list[int],
    extend: str,
    validate_length: int | None,
    task: str,
    samples: int,
    validation_samples: int,
    optimizer: str,
    time_limit: float,
    eval_lengths: list[int] | None,
    eval_samples: int,
    sink: int,
    block: int,
    layer_baseline: bool,
    statistic: str,
    grid_resolution: int,
    out: Path,
) -> None:
    """calibrate -> profile -> optimize -> validate (-> evaluate) in one resumable command."""
    from moa.pipeline import CompressSettings, run_compress

    try:
        dens = [float(v) for v in densities.split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got {densities!r}", param_hint="--density"
        ) from None
    settings = CompressSettings(
        model=model_path,
        densities=dens,
        lengths=lengths,
        extend=extend,
        validate_length=validate_length,
        task=task,
        samples=samples,
        validation_samples=validation_samples,
        optimizer=optimizer,
        time_limit=time_limit,
        eval_lengths=eval_lengths or (),
        eval_samples=eval_samples,
        sink=sink,
        block=block,
        layer_baseline=layer_baseline,
        statistic=statistic,
        grid_resolution=grid_resolution,
        out=out,
    )
    result: dict[str, Any] = run_compress(settings, echo=_echo_err)
    click.echo(result["report"])
    click.echo(f"final plan: {result['plan']}")
