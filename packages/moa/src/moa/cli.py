"""``moa eval``, ``moa validate`` and ``moa compress``: the umbrella's commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from moa_plan import ModelFingerprint, atomic_write_text
from moa_plan.cli import LengthList
from moa_profiler.options import statistic_options

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
    help="dense | uniform:FRACTION (every head F x N) | window:TOKENS (every head a fixed window, sink included) "
    "| head:LAYER.KV_HEAD (that KV head dense, the others sink + one block) "
    "| heads (one such probe per KV head) | [NAME=]PLAN.json; repeatable.",
)
@click.option(
    "--tasks",
    default="lines,passkey",
    show_default=True,
    help="Comma-separated: toy tasks (lines, passkey, multikey; chat form) and English tasks "
    "(niah, niah-multi, passkey-en, lines-en).",
)
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
@click.option(
    "--form",
    type=click.Choice(["completion", "chat"]),
    help="Prompt form of the English tasks: completion (plain text ending with the answer's start; the "
    "default) or chat (one user turn). The toy tasks are always chat.",
)
@click.option(
    "--essays",
    "essays_path",
    type=click.Path(path_type=Path),
    help="Directory of essays (*.txt) for niah / niah-multi (their evaluation split); default: the assets cache.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    help="New tokens per answer (default: 6 for toy tasks; niah 16, niah-multi 24, passkey-en 8, lines-en 8).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output directory. Each finished (plan, task, length) cell is kept in OUT/retrieval.cells.json: "
    "the same command resumes an interrupted run, and a run with one more plan measures only that plan.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Share the run with the other N - 1 processes started with the same command and their own --shard (0 <= K < N; "
    "e.g. OMP_NUM_THREADS=1, one per core): each takes the next (task, length, plan) cell no process has claimed, "
    "longest prompts first (claims in OUT/retrieval.claims/), and keeps its cells in "
    "OUT/retrieval.cells.shard-K-of-N.json; the same command without --shard then reads every shard's cells back, "
    "measures any cell still missing, and writes the tables.",
)
@click.option("--json", "as_json", is_flag=True)
def retrieval(
    model_path: Path,
    plans: tuple[str, ...],
    tasks: str,
    lengths: list[int],
    samples: int,
    seed: int,
    batch_size: int,
    form: str | None,
    essays_path: Path | None,
    max_new_tokens: int | None,
    out: Path,
    shard: str | None,
    as_json: bool,
) -> None:
    """Retrieval accuracy by depth x length, per plan: toy tasks and NIAH / passkey / LongEval lines in English."""
    from moa.evaluate import (
        CellClaims,
        CellStore,
        effective_context,
        effective_context_table,
        load_model,
        parse_plan_specs,
        retrieval_eval,
    )
    from moa.report import retrieval_outputs
    from moa_plan.assets import read_essays
    from moa_plan.tasks import RETRIEVAL_TASKS, TASKS

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS + RETRIEVAL_TASKS]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown task {unknown[0] if unknown else tasks!r}; expected some of {', '.join(TASKS + RETRIEVAL_TASKS)}",
            param_hint="--tasks",
        )
    shard_index, shard_count = _parse_shard(shard)
    # Read the essays before the model loads, so that missing essays fail at once.
    essays = read_essays(essays_path) if {"niah", "niah-multi"} & set(names) else None
    model, tokenizer = load_model(model_path)
    specs = parse_plan_specs(plans, ModelFingerprint.from_config(model.config))
    essay_digest = hashlib.sha256(json.dumps(sorted(essays.items())).encode()).hexdigest() if essays else None
    settings = {
        "model": str(model_path.resolve()), "samples": samples, "seed": seed, "form": form,
        "max_new_tokens": max_new_tokens, "essays": essay_digest,
    }  # fmt: skip
    claims = None
    if shard_count > 1:
        store = CellStore(out / f"retrieval.cells.shard-{shard_index}-of-{shard_count}.json", settings)
        digest = hashlib.sha256(json.dumps(store.settings, sort_keys=True).encode()).hexdigest()[:16]
        claims = CellClaims(out / "retrieval.claims" / digest)
    else:
        store = CellStore(
            out / "retrieval.cells.json", settings, merge=sorted(out.glob("retrieval.cells.shard-*.json"))
        )
    rows = retrieval_eval(
        model,
        tokenizer,
        specs,
        tasks=names,
        lengths=lengths,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        form=form,
        essays=essays,
        progress=_echo_err,
        store=store,
        claims=claims,
    )
    if shard_count > 1:
        cells = len({(r["plan"], r["task"], r["length"]) for r in rows})
        if as_json:
            click.echo(json.dumps({"rows": rows, "shard": [shard_index, shard_count], "store": str(store.path)}))
        else:
            click.echo(f"shard {shard_index}/{shard_count}: {cells} cells kept in {store.path}; the same command without "
                       "--shard reads every shard back and writes the tables")  # fmt: skip
        return
    table = retrieval_outputs(rows, out)
    eff = effective_context(rows)
    by_task = effective_context_table(rows)
    if as_json:
        click.echo(json.dumps({"rows": rows, "effective_context": eff, "effective_context_by_task": by_task}))
        return
    click.echo(table)

    def shown(value: int | None) -> str:
        return str(value) if value is not None else f"< {min(lengths)}"

    parts = []
    for plan, length in eff.items():
        tasks_of = [r for r in by_task if r["plan"] == plan and r["task"] != "all"]
        detail = ", ".join(f"{r['task']} {shown(r['effective_length'])}" for r in tasks_of)
        parts.append(f"{plan} {shown(length)}" + (f" ({detail})" if len(tasks_of) > 1 else ""))
    click.echo("effective context length (>= 90% retrieval): " + ", ".join(parts))


def _parse_shard(value: str | None) -> tuple[int, int]:
    """``K/N`` as ``(K, N)``; no shard is ``(0, 1)``."""
    if value is None:
        return 0, 1
    try:
        index, parts = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(
            f"expected K/N, two integers such as 0/2, got {value!r}", param_hint="--shard"
        ) from None
    if not 0 <= index < parts:
        raise click.BadParameter(
            f"shard {value!r} does not exist: K must be at least 0 and below N", param_hint="--shard"
        )
    return index, parts


@eval_group.command("ppl")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--plan", "plans", multiple=True, default=["dense"], show_default=True)
@click.option("--data", type=click.Path(path_type=Path), help="Calibration-format Parquet (answer-token perplexity).")
@click.option(
    "--essays",
    "essays_path",
    is_flag=False,
    flag_value="",
    type=click.Path(path_type=str),
    help="Perplexity over all tokens of held-out evaluation essays cut to each --lengths; "
    "--essays alone reads the assets cache, --essays DIR another directory of *.txt.",
)
@click.option("--lengths", type=LengthList(), default="2048", show_default=True, help="Text lengths of --essays.")
@click.option(
    "--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Texts per length of --essays."
)
@click.option("--seed", type=int, default=1234, show_default=True, help="Which essays start the --essays texts.")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use only the first N samples of --data.")
@click.option(
    "--side",
    type=click.Choice(["evaluation", "calibration"]),
    default="evaluation",
    show_default=True,
    help="Which essays --essays reads: the held-out evaluation essays (to report), or the calibration essays (to "
    "choose a setting by, e.g. moa optimize --mix-weight, without looking at evaluation text).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Also write ppl.parquet and ppl.md here.")
@click.option("--json", "as_json", is_flag=True)
def ppl(
    model_path: Path,
    plans: tuple[str, ...],
    data: Path | None,
    essays_path: str | None,
    lengths: list[int],
    samples: int,
    seed: int,
    max_samples: int | None,
    side: str,
    out: Path | None,
    as_json: bool,
) -> None:
    """Perplexity per plan: on the answer tokens of a calibration set (--data) or on held-out essays (--essays)."""
    import math

    from moa.bench.report import markdown_table, write_parquet
    from moa.evaluate import answer_loss, essay_perplexity, essay_texts, load_model, parse_plan_specs, using_plan

    if (data is None) == (essays_path is None):
        raise click.UsageError("give exactly one of --data PARQUET and --essays [DIR]")
    essays = None
    if essays_path is not None:
        from moa_plan.assets import read_essays

        essays = read_essays(essays_path or None)
    model, tokenizer = load_model(model_path)
    specs = parse_plan_specs(plans, ModelFingerprint.from_config(model.config))
    if essays is not None:
        texts = essay_texts(tokenizer, essays, lengths, samples, seed=seed, side=side)
        rows = essay_perplexity(model, tokenizer, specs, texts, progress=_echo_err)
        columns = ["plan", "length", "loss", "ppl", "samples", "tokens", "kv_density"]
    else:
        from moa_profiler import read_calibration

        assert data is not None
        calibration = read_calibration(data).samples[:max_samples]
        rows = []
        for spec in specs:
            with using_plan(model, spec.plan):
                loss = answer_loss(model, calibration)
            rows.append({"plan": spec.name, "loss": loss, "ppl": math.exp(loss), "samples": len(calibration)})
        columns = ["plan", "loss", "ppl", "samples"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(rows, out / "ppl.parquet")
        atomic_write_text(out / "ppl.md", markdown_table(rows, columns))
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        at = f"  N={r['length']:>6}" if "length" in r else ""
        click.echo(f"{r['plan']:>20}{at}  loss {r['loss']:.4f}  ppl {r['ppl']:.3f}")


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
@click.option(
    "--max-ppl-increase",
    type=click.FloatRange(min=0),
    help="Perplexity guard: only plans within this many percent of dense perplexity on calibration essays may win "
    "(the lowest answer loss under a perplexity bound).",
)
@click.option(
    "--ppl-essays",
    "ppl_essays",
    type=click.Path(path_type=Path),
    help="Guard essays: a directory of *.txt whose calibration side is read (default: the assets cache).",
)
@click.option("--ppl-lengths", type=LengthList(), help="Guard text lengths (default: the validation set's).")
@click.option("--ppl-samples", type=click.IntRange(min=1), default=8, show_default=True, help="Guard texts per length.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def validate(
    model_path: Path,
    plan_paths: tuple[Path, ...],
    data: Path,
    max_samples: int | None,
    max_ppl_increase: float | None,
    ppl_essays: Path | None,
    ppl_lengths: list[int] | None,
    ppl_samples: int,
    out: Path,
    as_json: bool,
) -> None:
    """Pick the plan with the lowest answer-token loss at an unseen length; write OUT/plan.json.

    With --max-ppl-increase, only among the plans whose perplexity on calibration essays stays within that bound.
    """
    from moa.bench.report import markdown_table, write_parquet
    from moa.evaluate import essay_texts, load_model
    from moa.validate import NoFeasiblePlanError, collect_plans, validate_plans

    if max_ppl_increase is None and (ppl_essays is not None or ppl_lengths):
        raise click.UsageError("--ppl-essays and --ppl-lengths need --max-ppl-increase")
    plans = collect_plans(list(plan_paths))
    essays = None
    if max_ppl_increase is not None:
        from moa_plan.assets import read_essays
        from moa_profiler import read_calibration

        essays = read_essays(ppl_essays)
        ppl_lengths = ppl_lengths or sorted({s.bucket for s in read_calibration(data).samples})
    model, tokenizer = load_model(model_path)
    texts = None
    if essays is not None:
        texts = essay_texts(tokenizer, essays, ppl_lengths or [], ppl_samples, side="calibration")
    guard = ["ppl_increase", "feasible"] if texts is not None else []

    def report(rows: list[dict[str, Any]]) -> str:
        write_parquet(rows, out / "validation.parquet")
        table = markdown_table(rows, ["plan", "loss", *guard, "density_at_length", "length", "samples", "best"])
        atomic_write_text(out / "validation.md", table)
        return table

    try:
        rows = validate_plans(
            model,
            plans,
            data,
            out,
            max_samples=max_samples,
            tokenizer=tokenizer,
            guard_texts=texts,
            max_ppl_increase=max_ppl_increase,
            progress=_echo_err,
        )
    except NoFeasiblePlanError as error:
        # The measurements are what the user waited for: show and keep them, then the one-sentence error.
        table = report(error.rows)
        click.echo(json.dumps(error.rows) if as_json else table)
        raise
    table = report(rows)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(table)
    click.echo(f"wrote {out / 'plan.json'} (from {next(r['plan'] for r in rows if r['best'])})")


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
    help="Calibration task(s) of moa_plan.tasks, comma-separated (e.g. summary,facts for a real model); "
    "not an evaluation task.",
)
@click.option(
    "--records",
    type=click.Path(path_type=Path),
    help="Your own calibration records (.jsonl or .parquet with a context column) instead of --task; "
    "each document is cut to every profiled length and answered by the model.",
)
@click.option(
    "--validation-records",
    type=click.Path(path_type=Path),
    help="Records for the validation length (default: --records).",
)
@click.option(
    "--template",
    type=click.Choice(["chat", "plain"]),
    default="chat",
    show_default=True,
    help="Calibration prompts through the chat template, or as plain text (completion-form records).",
)
@click.option(
    "--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Calibration answer cap."
)
@click.option(
    "--answers",
    type=click.Choice(["model", "reference"]),
    default="model",
    show_default=True,
    help="Calibration answers: the model's own (model alignment) or each record's reference answer.",
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
@click.option(
    "--eval-tasks",
    default="lines,passkey",
    show_default=True,
    help="Evaluation tasks (toy: lines, passkey; real text: niah, passkey-en, niah-multi, lines-en).",
)
@click.option("--sink", type=click.IntRange(min=0), default=64, show_default=True, help="Sink tokens S of the plans.")
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True, help="Block size B of the plans.")
@statistic_options
@click.option(
    "--shape/--no-shape",
    default=True,
    show_default=True,
    help="With --statistic ablation, greedy or gate, also profile MoA's influence on the same calibration set and "
    "shape each head's measured cut cost by it (moa optimize --shape-by).",
)
@click.option(
    "--shape-linear",
    type=click.FloatRange(min=0.0, max=1.0),
    default=0.0,
    show_default=True,
    help="With --shape: the part of each head's measured cut cost spread evenly over the distances instead of by "
    "the influence (moa optimize --shape-linear).",
)
@click.option(
    "--grid-resolution",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Divide the optimizer's rule-grid steps by this (1: the original MoA grid).",
)
@click.option(
    "--mix-task",
    default="",
    help="A second calibration objective (e.g. continue: prose continuation of the calibration essays), profiled "
    "with MoA's influence and added by moa optimize --mix, so that the plans also keep what prose needs.",
)
@click.option(
    "--mix-weight",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Weight of --mix-task against the first objective, at equal range (moa_plan.mix_profiles).",
)
@click.option(
    "--mix-statistic",
    type=click.Choice(["influence", "gate"]),
    default="influence",
    show_default=True,
    help="Statistic of --mix-task: MoA's influence, or gates trained on its answers (--gate-steps, --gate-lr, "
    "--mix-gate-penalty) shaped by its influence (moa optimize --mix-shape-by); the gates rank prose heads right "
    "where the influence does not (RESULTS.md, nineteenth session).",
)
@click.option(
    "--mix-gate-penalty",
    type=click.FloatRange(min=0.0),
    default=0.05,
    show_default=True,
    help="Last L1 penalty of the --mix-statistic gate training, nats per open KV head (prose moves by hundredths).",
)
@click.option(
    "--max-ppl-increase",
    type=click.FloatRange(min=0.0),
    help="Perplexity guard of the validation: only plans within this many percent of dense perplexity on "
    "calibration essays at the validation length may win (the lowest answer loss under a perplexity bound).",
)
@click.option(
    "--layer-baseline/--no-layer-baseline",
    default=True,
    show_default=True,
    help="Also solve, validate and evaluate per-layer-only plans (one rule per layer) at each budget.",
)
@click.option(
    "--duo-baseline/--no-duo-baseline",
    default=True,
    show_default=True,
    help="Also solve, validate and evaluate DuoAttention-style plans (each KV head whole or sink + one fixed window).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def compress(
    model_path: Path,
    densities: str,
    lengths: list[int],
    extend: str,
    validate_length: int | None,
    task: str,
    records: Path | None,
    validation_records: Path | None,
    template: str,
    max_new_tokens: int,
    answers: str,
    samples: int,
    validation_samples: int,
    optimizer: str,
    time_limit: float,
    eval_lengths: list[int] | None,
    eval_samples: int,
    eval_tasks: str,
    sink: int,
    block: int,
    layer_baseline: bool,
    duo_baseline: bool,
    statistic: str,
    greedy_group: int,
    greedy_stop: float,
    greedy_lazy: bool,
    gate_steps: int,
    gate_lr: float,
    gate_penalty: float,
    shape: bool,
    shape_linear: float,
    grid_resolution: int,
    mix_task: str,
    mix_weight: float,
    mix_statistic: str,
    mix_gate_penalty: float,
    max_ppl_increase: float | None,
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
        records=records,
        validation_records=validation_records,
        template=template,
        max_new_tokens=max_new_tokens,
        answers=answers,
        samples=samples,
        validation_samples=validation_samples,
        optimizer=optimizer,
        time_limit=time_limit,
        eval_lengths=eval_lengths or (),
        eval_samples=eval_samples,
        eval_tasks=eval_tasks,
        sink=sink,
        block=block,
        layer_baseline=layer_baseline,
        duo_baseline=duo_baseline,
        statistic=statistic,
        greedy_group=greedy_group,
        greedy_stop=greedy_stop,
        greedy_lazy=greedy_lazy,
        gate_steps=gate_steps,
        gate_lr=gate_lr,
        gate_penalty=gate_penalty,
        shape=shape,
        shape_linear=shape_linear,
        grid_resolution=grid_resolution,
        mix_task=mix_task.strip(),
        mix_weight=mix_weight,
        mix_statistic=mix_statistic,
        mix_gate_penalty=mix_gate_penalty,
        max_ppl_increase=max_ppl_increase,
        out=out,
    )
    result: dict[str, Any] = run_compress(settings, echo=_echo_err)
    click.echo(result["report"])
    click.echo(f"final plan: {result['plan']}")
