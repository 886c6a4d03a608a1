"""``moa optimize`` (entry-point group ``moa.commands``): profiles in, Pareto plans out."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from moa_plan import MoaError, load_profile
from moa_plan.cli import LengthList, MoaCommandError

__all__ = ["optimize_command"]


def _extend(value: str | None) -> float | None:
    if value is None or value.lower() in ("none", "off", "0", "1x", "1"):
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*x?\s*", value)
    if not match or float(match.group(1)) < 1:
        raise click.BadParameter(f"expected a factor such as 2x, got {value!r}", param_hint="--extend")
    return float(match.group(1))


def _run(ctx_fn: Any) -> Any:
    try:
        return ctx_fn()
    except MoaError as exc:
        raise MoaCommandError(str(exc)) from None


def _by_length(profiles: list[Any]) -> dict[int, Any]:
    """One profile per length: profiles of the same length are merged by sample count (`moa_plan.merge_profiles`)."""
    from moa_plan import merge_profiles

    lengths = sorted({p.length for p in profiles})
    return {n: merge_profiles([p for p in profiles if p.length == n]) for n in lengths}


def _per_length(profiles: list[Any], paths: tuple[Path, ...], flag: str) -> dict[int, Any]:
    """The profiles of ``paths`` (an option's files), one per length of ``profiles``, merged by sample count.

    Raises:
        ProfileError: a length of ``profiles`` has none, or one of them has a length no profile has.
    """
    from moa_plan import ProfileError

    given = _by_length([load_profile(path) for path in paths])
    lengths = {p.length for p in profiles}
    missing, extra = sorted(lengths - set(given)), sorted(set(given) - lengths)
    if missing:
        raise ProfileError(f"{flag} has no profile of length {missing[0]} (give one per profiled length).")
    if extra:
        raise ProfileError(f"{flag} has a profile of length {extra[0]}, which no --profiles file has.")
    return given


def _shaped(
    profiles: list[Any], shape_paths: tuple[Path, ...], flag: str = "--shape-by", linear: float = 0.0
) -> list[Any]:
    """Each profile shaped by the profile of its length among ``shape_paths`` (`moa_plan.shape_profile`)."""
    from moa_plan import shape_profile

    shapes = _per_length(profiles, shape_paths, flag)
    return [shape_profile(p, shapes[p.length], linear=linear) for p in profiles]


def _mixed(
    profiles: list[Any], mix_paths: tuple[Path, ...], weight: float, shape_paths: tuple[Path, ...] = ()
) -> list[Any]:
    """Each profile mixed with the --mix profile of its length (`moa_plan.mix_profiles`).

    With ``shape_paths`` (--mix-shape-by) each --mix profile is first shaped by the one of its length
    (`moa_plan.shape_profile`), as --shape-by shapes the first objective.
    """
    from moa_plan import mix_profiles

    others = list(_per_length(profiles, mix_paths, "--mix").values())
    if shape_paths:
        others = _shaped(others, shape_paths, "--mix-shape-by")
    by_length = {p.length: p for p in others}
    return [mix_profiles(p, by_length[p.length], weight) for p in profiles]


@click.command("optimize")
@click.option(
    "--profiles",
    "first",
    required=True,
    type=click.Path(path_type=Path),
    help="Profile files; more may follow as arguments. Profiles of the same length (e.g. one per calibration "
    "task) are merged by sample count.",
)
@click.argument("more", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--density", type=float, required=True, help="Upper bound on mean KV density at every constrained length."
)
@click.option("--lower", type=float, help="Lower bound on mean KV density (default 0.9 x density).")
@click.option("--lengths", type=LengthList(), help="Extra constrained lengths, comma-separated.")
@click.option(
    "--extend",
    default="2x",
    show_default=True,
    help="Also constrain this factor x the longest profiled length ('none' for no).",
)
@click.option(
    "--max-rules-per-layer", default="2", show_default=True, help="Most distinct rules per layer ('none' for no limit)."
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds per solve (CP-SAT deterministic seconds: about one second each on a quiet machine).",
)
@click.option(
    "--optimizer",
    "optimizer_name",
    default="builtin",
    show_default=True,
    help="Optimizer plugin (entry-point group moa.optimizers).",
)
@click.option(
    "--solver",
    type=click.Choice(["cp-sat", "scip", "cbc"]),
    default="cp-sat",
    show_default=True,
    help="Backend of the builtin optimizer.",
)
@click.option(
    "--single", is_flag=True, help="One solve (minimise the loss at --objective-length) instead of the Pareto front."
)
@click.option("--objective-length", type=int, help="Profiled length to minimise (default: the longest).")
@click.option(
    "--points",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Epsilon grid points per other objective.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CP-SAT workers: 1 gives the same plans every run; more are faster on large models but not reproducible.",
)
@click.option(
    "--grid-resolution",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Divide the rule grid's alpha and beta steps by this (1: the original MoA grid; 2: betas in 16ths).",
)
@click.option(
    "--alphas",
    help="Rule-grid alphas, comma-separated (replaces the default grid with the Cartesian product of --alphas "
    "and --betas; e.g. --alphas 0,320 --betas 0,1: each head whole or sink + a fixed window, DuoAttention-style).",
)
@click.option("--betas", help="Rule-grid betas in [0, 1], comma-separated (with or without --alphas).")
@click.option(
    "--shape-by",
    "shape_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Influence profile(s) of the same lengths: each profile's loss per KV head (e.g. a measured one, "
    "--statistic greedy) is spread over distances like this one's influence (moa_plan.shape_profile); repeatable "
    "(those of the same length are merged by sample count).",
)
@click.option(
    "--shape-linear",
    type=click.FloatRange(min=0.0, max=1.0),
    default=0.0,
    show_default=True,
    help="With --shape-by: the part of each head's measured loss spread evenly over the distances instead of by "
    "the influence (its loss then falls linearly with the window); the influence sits near the diagonal and prices "
    "long windows of far-reading heads too low.",
)
@click.option(
    "--mix",
    "mix_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Profile(s) of a second objective, one per profiled length (e.g. the influence of a prose continuation, "
    "`moa calibrate --task continue`): added after --shape-by, scaled so that cutting every head to the sink + "
    "one block costs --mix-weight times what it costs in the first (moa_plan.mix_profiles); repeatable.",
)
@click.option(
    "--mix-shape-by",
    "mix_shape_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Influence profile(s) of the --mix objective, one per profiled length: each --mix profile (e.g. a measured "
    "one, --statistic gate on `continue` prompts) is spread over distances like this one's influence before it is "
    "mixed, as --shape-by does for the first; repeatable.",
)
@click.option(
    "--mix-weight",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Weight of the --mix objective against the first, at equal range.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--show-rules", is_flag=True, help="Print the rule grid (spans at every constrained length) first.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
def optimize_command(
    first: Path,
    more: tuple[Path, ...],
    density: float,
    lower: float | None,
    lengths: list[int] | None,
    extend: str | None,
    max_rules_per_layer: str,
    time_limit: float,
    optimizer_name: str,
    solver: str,
    single: bool,
    objective_length: int | None,
    points: int,
    threads: int,
    grid_resolution: int,
    alphas: str | None,
    betas: str | None,
    shape_paths: tuple[Path, ...],
    shape_linear: float,
    mix_paths: tuple[Path, ...],
    mix_shape_paths: tuple[Path, ...],
    mix_weight: float,
    no_plots: bool,
    show_rules: bool,
    out: Path,
    as_json: bool,
) -> None:
    """Choose one elastic rule per KV head from profiles: Pareto plans under a KV density budget.

    Example: moa optimize --profiles p2k.safetensors p4k.safetensors p8k.safetensors --density 0.5 --out plans/
    """
    from moa_optimizer.config import OptimizeConfig
    from moa_optimizer.plugins import load_optimizer
    from moa_optimizer.report import format_room, format_summary, write_outputs

    if not 0.0 < density <= 1.0:
        raise click.BadParameter(f"density must be in (0, 1], got {density}", param_hint="--density")
    if lower is not None and not 0.0 <= lower <= density:
        raise click.BadParameter(f"lower bound must be in [0, {density}], got {lower}", param_hint="--lower")
    if mix_shape_paths and not mix_paths:
        raise click.BadParameter("it shapes --mix profiles, and no --mix was given", param_hint="--mix-shape-by")
    if shape_linear and not shape_paths:
        raise click.BadParameter(
            "it changes the --shape-by shape, and no --shape-by was given", param_hint="--shape-linear"
        )
    limit = None if max_rules_per_layer.lower() in ("none", "off") else _positive_int(max_rules_per_layer)
    config = OptimizeConfig(
        density=density,
        lower=lower,
        lengths=tuple(lengths or ()),
        extend=_extend(extend),
        max_rules_per_layer=limit,
        time_limit=time_limit,
        backend=solver,
        threads=threads,
        pareto=not single,
        objective_length=objective_length,
        points=points,
        grid_resolution=grid_resolution,
        alphas=_numbers(alphas, "--alphas"),
        betas=_numbers(betas, "--betas"),
    )
    fn = _run(lambda: load_optimizer(optimizer_name))
    paths = [first, *more]
    profiles = _run(lambda: [load_profile(p) for p in paths])
    _run(lambda: _same_model(profiles, paths))
    profiles = list(_run(lambda: _by_length(profiles)).values())
    if shape_paths:
        profiles = _run(lambda: _shaped(profiles, shape_paths, linear=shape_linear))
    if mix_paths:
        profiles = _run(lambda: _mixed(profiles, mix_paths, mix_weight, mix_shape_paths))
    if show_rules and not as_json:
        from moa_optimizer.grid import format_rule_table, make_grid

        profiled = sorted(p.length for p in profiles)
        lengths_all = config.constrained_lengths(profiled)
        grid = _run(
            lambda: make_grid(
                lengths_all,
                profiled,
                alphas=config.alphas,
                betas=config.betas,
                sink=profiles[0].sink,
                block=profiles[0].block,
                resolution=grid_resolution,
            )
        )
        click.echo(format_rule_table(grid, lengths_all))
    plans = _run(lambda: fn(profiles, config))
    if not plans:
        raise MoaCommandError(f"optimizer {optimizer_name!r} returned no plans")
    table = _run(lambda: write_outputs(plans, out, plots=not no_plots))
    if as_json:
        click.echo(json.dumps({"out": str(out), "plans": table.to_dicts()}))
        return
    click.echo(format_summary(table))
    room = format_room(plans[0])
    if room:
        click.echo(room)
    click.echo(f"wrote {len(plans)} plan(s), summary.parquet{'' if no_plots else ', pareto.png, heatmaps'} to {out}")


def _numbers(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from None
    if not values:
        raise click.BadParameter("expected at least one number", param_hint=option)
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise click.BadParameter(
            f"expected a positive integer or 'none', got {text!r}", param_hint="--max-rules-per-layer"
        )
    return value


def _same_model(profiles: list[Any], paths: list[Path]) -> None:
    from moa_optimizer.errors import OptimizerError

    first = profiles[0]
    for p, path in zip(profiles[1:], paths[1:], strict=True):
        diffs = first.model.differences(p.model)
        if diffs:
            field = diffs[0].split(":")[0]
            raise OptimizerError(f"{path} profiles a different model than {paths[0]} ({field} differs)")
