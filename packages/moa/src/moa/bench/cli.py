"""``moa bench``: end-to-end, optimizer and profiling benchmarks."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from moa_plan import MoaError, resolve_model_source
from moa_plan.cli import LengthList

__all__ = ["bench"]


@click.group("bench")
def bench() -> None:
    """Benchmarks: ratios against baselines measured in the same run (not tests)."""


def _float_list(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not out or any(not 0 < v <= 1 for v in out):
        raise click.BadParameter(f"densities must lie in (0, 1], got {value!r}")
    return out


def _named_plans(values: tuple[str, ...], model: str) -> list[tuple[str, Path]]:
    """(name, path) of each ``[NAME=]PLAN.json``, checked against ``model`` by `moa.evaluate.parse_plan_specs`."""
    from transformers import LlamaConfig

    from moa.bench.e2e import BENCH_MODEL
    from moa.evaluate import parse_plan_specs
    from moa_plan import ModelFingerprint

    if not values:
        return []
    if model == "bench":
        config = {k: v for k, v in BENCH_MODEL.items() if k not in ("architectures", "model_type")}
        fingerprint = ModelFingerprint.from_config(LlamaConfig(**config))
    else:
        fingerprint = ModelFingerprint.from_model_path(model)
    specs = parse_plan_specs(list(values), fingerprint)
    return [(spec.name, Path(value.rpartition("=")[2])) for spec, value in zip(specs, values, strict=True)]


_E2E_COLUMNS = [
    "label",
    "length",
    "batch",
    "prefill_chunk",
    "prefill_s",
    "prefill_speedup",
    "decode_tok_s",
    "decode_speedup",
    "decode_vs_dynamic",
    "decode_spread",
    "floor_ratio",
    "of_floor_ratio",
    "floor_fraction",
    "kv_density",
    "kv_bytes",
    "kv_vs_formula",
    "peak_rss_bytes",
    "error",
]


def _profile_tables(rows: list[dict[str, object]]) -> str:
    from moa.bench.report import markdown_table

    parts = []
    for row in rows:
        ops = row.get("profile")
        if isinstance(ops, list) and ops:
            parts.append(
                f"\nOne decode step of {row['label']} (N={row['length']}, batch {row['batch']}), top operators:\n\n"
                + markdown_table(ops, ["op", "calls", "self_ms", "share"])
            )
    return "".join(parts)


@bench.command("e2e")
@click.option(
    "--model",
    "models",
    multiple=True,
    default=["bench"],
    show_default=True,
    help="'bench' (the random-init benchmark config), a model directory or a .gguf file; repeatable.",
)
@click.option("--lengths", type=LengthList(), default="4096,8192,16384", show_default=True)
@click.option("--batches", type=LengthList(), default="1,4", show_default=True)
@click.option(
    "--methods",
    default="dense,dense-static,uniform,moa",
    show_default=True,
    help="Comma-separated from: dense (dynamic cache, transformers' default), dense-static (StaticCache: the "
    "baseline of every ratio), dense-compiled (dense-static + torch.compile of the decode step), uniform, moa.",
)
@click.option(
    "--densities",
    default="0.5,0.25",
    show_default=True,
    help="KV densities of the uniform plans (and of the heterogeneous bench plans when no --plan is given).",
)
@click.option(
    "--plan",
    "plans",
    multiple=True,
    help="[NAME=]PLAN.json run as a 'moa' case (instead of the heterogeneous bench plans); repeatable.",
)
@click.option("--new-tokens", type=click.IntRange(min=8), default=24, show_default=True)
@click.option(
    "--prefill-rows",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Rows to prefill; the cache is replicated to the batch (decode reads the same bytes). 0: every row.",
)
@click.option(
    "--prefill-chunk",
    type=click.IntRange(min=0),
    default=None,
    help="Prefill chunk in tokens for every method (0: one pass). Default: dense one pass, plans 4096.",
)
@click.option(
    "--max-batch-gib",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Instead of --batches: the largest batch of each method whose measured peak (VmHWM) stays within this, "
    "and its decode speed (prefill-rows 1).",
)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--profile-step", is_flag=True, help="Also profile one decode step per case (top operators).")
@click.option(
    "--linear",
    type=click.Choice(["torch", "left", "packed"]),
    default="torch",
    show_default=True,
    help="Weight products of every method: torch (F.linear, as transformers runs them), left (decode's products as "
    "W @ x.T, moa_runtime.left_operand_linears) or packed (oneDNN-packed weights, moa_runtime.packed_linears); "
    "for dense and plans alike.",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch threads per case.")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run the whole set of cases this many times round-robin; each case reports its median decode tok/s and "
    "prefill time (a shared machine's slow spells then hit every method alike).",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"), show_default=True)
def e2e(
    models: tuple[str, ...],
    lengths: list[int],
    batches: list[int],
    methods: str,
    densities: str,
    plans: tuple[str, ...],
    new_tokens: int,
    prefill_rows: int,
    prefill_chunk: int | None,
    max_batch_gib: float | None,
    dtype: str,
    profile_step: bool,
    linear: str,
    threads: int,
    rounds: int,
    out: Path,
) -> None:
    """Prefill latency, decode tokens/s, KV bytes and peak memory: dense baselines vs uniform vs MoA."""
    from moa.bench.bandwidth import copy_bandwidth
    from moa.bench.e2e import METHODS, Case, add_ratios, find_max_batch, run_e2e
    from moa.bench.env import environment
    from moa.bench.report import write_results

    dens = _float_list(densities)
    chosen = [m for m in methods.split(",") if m]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown method {unknown[0] if unknown else methods!r}; expected some of {', '.join(METHODS)}",
            param_hint="--methods",
        )
    if plans and len(models) > 1:
        raise click.BadParameter("--plan files belong to one model; give one --model with them", param_hint="--plan")
    for model in models:
        if model != "bench":
            try:
                resolve_model_source(model, require_weights=True)
            except MoaError as exc:
                raise click.BadParameter(str(exc), param_hint="--model") from None
    try:
        named = _named_plans(plans, models[0])
    except MoaError as exc:
        raise click.BadParameter(str(exc), param_hint="--plan") from None
    if prefill_rows and max_batch_gib is None and any(b % prefill_rows for b in batches):
        raise click.BadParameter(f"--prefill-rows {prefill_rows} must divide every batch", param_hint="--prefill-rows")

    def cases_for(model: str, length: int, batch: int) -> list[Case]:
        common = {
            "model": model,
            "length": length,
            "batch": batch,
            "new_tokens": new_tokens,
            "threads": threads,
            "prefill_chunk_size": prefill_chunk,
            "prefill_rows": prefill_rows or None,
            "dtype": dtype,
            "profile_step": profile_step,
            "linear": linear,
        }
        cell = []
        for method in chosen:
            if method == "uniform":
                cell += [Case(method="uniform", density=d, **common) for d in dens]  # type: ignore[arg-type]
            elif method == "moa" and named:
                cell += [Case(method="moa", name=n, plan=str(p), **common) for n, p in named]  # type: ignore[arg-type]
            elif method == "moa":
                cell += [Case(method="moa", density=d, **common) for d in dens]  # type: ignore[arg-type]
            else:
                cell.append(Case(method=method, **common))  # type: ignore[arg-type]
        return cell

    bandwidth = copy_bandwidth()
    click.echo(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s", err=True)

    def progress(case: Case) -> None:
        click.echo(f"  {case.model} {case.label} N={case.length} B={case.batch}", err=True)

    if max_batch_gib is not None:
        rows = []
        for model in models:
            for length in lengths:
                for case in cases_for(model, length, 1):
                    rows.append(
                        find_max_batch(case, int(max_batch_gib * 2**30), bandwidth=bandwidth, progress=progress)
                    )
        rows = add_ratios(rows)
        base = {(r["model"], r["length"]): r for r in rows if r["method"] == "dense-static" and "error" not in r}
        for r in rows:
            b = base.get((r["model"], r["length"]))
            if b is not None and "error" not in r:
                r["batch_vs_static"] = r["batch"] / b["batch"]
                r["throughput_vs_static"] = r["decode_tok_s"] / b["decode_tok_s"]
        columns = [
            "label",
            "length",
            "fits_gib",
            "batch",
            "batch_vs_static",
            "decode_tok_s",
            "throughput_vs_static",
            "peak_rss_bytes",
            "kv_density",
            "error",
        ]
        name = "e2e-max-batch"
    else:
        cases = [
            c for model in models for length in lengths for batch in batches for c in cases_for(model, length, batch)
        ]
        click.echo(f"{len(cases)} cases", err=True)
        rows = run_e2e(cases, bandwidth=bandwidth, progress=progress, rounds=rounds)
        columns, name = _E2E_COLUMNS, "e2e"
    env = environment()
    env["copy_bandwidth_gb_s"] = bandwidth / 1e9
    command = "moa bench e2e " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    models_line = ", ".join(sorted({str(r["model"]) for r in rows}))
    text = write_results(
        rows, columns, out, name, env, command, footer=f"\nModels: {models_line}\n" + _profile_tables(rows)
    )
    click.echo(text)
    click.echo(json.dumps({"bench": name, "copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}, default=str))


@bench.command("profile")
@click.option("--lengths", type=LengthList(), default="512,1024,2048", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"), show_default=True)
def profile(lengths: list[int], out: Path) -> None:
    """Time and extra peak memory of profiling one sample vs length (4-layer, 8-head, 2-KV-head model)."""
    from moa.bench.env import environment
    from moa.bench.profile import run_profile_bench
    from moa.bench.report import write_results

    rows = run_profile_bench(lengths)
    columns = ["length", "seconds", "time_growth", "extra_mib", "memory_growth", "base_mib", "peak_mib", "error"]
    command = "moa bench profile " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    click.echo(write_results(rows, columns, out, "profile", environment(), command))
    click.echo(json.dumps({"bench": "profile", "rows": rows}))


@bench.command("optimizer")
@click.option("--sizes", default="7b,70b", show_default=True, help="Synthetic problem sizes.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"), show_default=True)
def optimizer(sizes: str, out: Path) -> None:
    """Search time of the built-in optimizer on 7B- and 70B-size synthetic problems."""
    from moa.bench.env import environment
    from moa.bench.report import write_results
    from moa_optimizer.bench import run_benchmark

    report = run_benchmark(
        [s for s in sizes.split(",") if s],
        density=0.5,
        single_time_limit=5.0,
        pareto_time_limit={"7b": 3.0, "70b": 15.0, "tiny": 1.0},
        points={"7b": 5, "70b": 5, "tiny": 3},
        repeats=1,
        log=lambda m: click.echo(m, err=True),
    )
    rows = report["results"]
    columns = ["size", "case", "seconds", "plans", "gap_max", "time_limit"]
    command = "moa bench optimizer " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    click.echo(write_results(rows, columns, out, "optimizer", environment(), command))
    click.echo(json.dumps({"bench": "optimizer", "results": rows}, default=str))
