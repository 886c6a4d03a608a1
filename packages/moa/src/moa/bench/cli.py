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
@click.option("--densities", default="0.5,0.25", show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=8), default=24, show_default=True)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="MoA plan for a real --model (otherwise a heterogeneous plan of equal density).",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch threads per case.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"), show_default=True)
def e2e(
    models: tuple[str, ...],
    lengths: list[int],
    batches: list[int],
    densities: str,
    new_tokens: int,
    plan_path: Path | None,
    threads: int,
    out: Path,
) -> None:
    """Prefill latency, decode tokens/s, KV bytes and peak memory: dense vs uniform vs MoA."""
    from moa.bench.bandwidth import copy_bandwidth
    from moa.bench.e2e import Case, run_e2e
    from moa.bench.env import environment
    from moa.bench.report import write_results

    dens = _float_list(densities)
    for model in models:
        if model != "bench":
            try:
                resolve_model_source(model, require_weights=True)
            except MoaError as exc:
                raise click.BadParameter(str(exc), param_hint="--model") from None
    cases = []
    for model in models:
        for length in lengths:
            for batch in batches:
                cases.append(
                    Case(
                        model=model, method="dense", length=length, batch=batch, new_tokens=new_tokens, threads=threads
                    )
                )
                for d in dens:
                    for method in ("uniform", "moa"):
                        plan = str(plan_path) if (method == "moa" and model != "bench" and plan_path) else None
                        cases.append(
                            Case(
                                model=model,
                                method=method,
                                length=length,
                                batch=batch,
                                density=d,
                                new_tokens=new_tokens,
                                plan=plan,
                                threads=threads,
                            )
                        )
    bandwidth = copy_bandwidth()
    click.echo(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {len(cases)} cases", err=True)

    def progress(case: Case) -> None:
        click.echo(f"  {case.model} {case.method} d={case.density} N={case.length} B={case.batch}", err=True)

    rows = run_e2e(cases, bandwidth=bandwidth, progress=progress)
    env = environment()
    env["copy_bandwidth_gb_s"] = bandwidth / 1e9
    columns = [
        "model",
        "method",
        "density",
        "length",
        "batch",
        "prefill_s",
        "prefill_speedup",
        "decode_tok_s",
        "decode_speedup",
        "floor_tok_s",
        "floor_fraction",
        "kv_bytes",
        "kv_ratio",
        "peak_rss_bytes",
        "error",
    ]
    command = "moa bench e2e " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    text = write_results(rows, columns, out, "e2e", env, command)
    click.echo(text)
    click.echo(json.dumps({"bench": "e2e", "copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}, default=str))


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
