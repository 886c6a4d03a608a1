"""The ``moa`` command and its ``moa plan`` group.

``moa`` is a click group whose subcommands come from the entry-point group ``moa.commands``:
each installed moa package adds its own (``plan`` here, ``generate`` from moa-runtime, ...).
Errors caused by input (`MoaError`) end with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from moa_plan._files import read_json_object
from moa_plan._version import __version__
from moa_plan.budget import Budget, check_budget
from moa_plan.errors import MoaError, PlanError
from moa_plan.fingerprint import ModelFingerprint
from moa_plan.original import export_moa_json, import_moa_json
from moa_plan.plan import Plan

__all__ = ["LengthList", "MoaCommandError", "main", "plan_group"]

DEFAULT_LENGTHS = (2048, 4096, 8192, 16384)


class MoaCommandError(click.ClickException):
    """A `MoaError` shown to the user: one line on stderr, exit code 2."""

    exit_code = 2


class LengthList(click.ParamType):
    """Comma-separated positive integers, e.g. ``2048,4096``."""

    name = "LENGTHS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list | tuple):
            return [int(v) for v in value]
        try:
            out = [int(part) for part in str(value).replace(" ", "").split(",") if part]
        except ValueError:
            self.fail(f"expected comma-separated integers, got {value!r}", param, ctx)
        if not out or any(n < 1 or n > 1 << 40 for n in out):
            self.fail(f"lengths must be positive integers below 2**40, got {value!r}", param, ctx)
        return out


class MoaGroup(click.Group):
    """A click group that loads ``moa.commands`` entry points and turns `MoaError` into exit 2."""

    def _plugins(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for ep in entry_points(group="moa.commands"):
            found.setdefault(ep.name, ep)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._plugins().get(cmd_name)
        return ep.load() if ep is not None else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoaError as exc:
            raise MoaCommandError(str(exc)) from None


def _show_warnings() -> None:
    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        click.echo(f"Warning: {message}", err=True)

    warnings.showwarning = show


@click.group(cls=MoaGroup)
@click.version_option(__version__, package_name="moa-plan", prog_name="moa")
def main() -> None:
    """moa: per-head elastic attention spans for long-context LLM inference."""
    _show_warnings()


@click.group("plan")
def plan_group() -> None:
    """Inspect, check, convert and create plan files."""


def _load_model(model: str | None) -> ModelFingerprint | None:
    return ModelFingerprint.from_model_path(model) if model else None


def _load_any(path: Path, model: str | None) -> Plan:
    """A moa plan file, or an original MoA plan imported on the fly."""
    data = read_json_object(path, "plan", PlanError)
    if "alphas" in data and "rules" not in data:
        return import_moa_json(path, _load_model(model))
    plan = Plan.from_dict(data, source=str(path))
    fingerprint = _load_model(model)
    if fingerprint is not None:
        plan.check_compatible(fingerprint)
    return plan


@plan_group.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--lengths", type=LengthList(), default=",".join(map(str, DEFAULT_LENGTHS)), show_default=True)
@click.option(
    "--model", help="Model directory, config.json or .gguf file (to import an original MoA plan onto a GQA model)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
def show(path: Path, lengths: list[int], model: str | None, as_json: bool) -> None:
    """Show a plan's rules per layer and its densities at LENGTHS.

    PATH may also be an original MoA plan (alphas/betas JSON); it is imported first.
    """
    plan = _load_any(path, model)
    densities = {n: plan.density(n) for n in lengths}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": plan.model.model_dump(),
                    "sink": plan.sink,
                    "block": plan.block,
                    "kv_density": {str(n): d for n, d in densities.items()},
                    "attention_density": {str(n): plan.attention_density(n) for n in lengths},
                    "rules_per_layer": plan.rules_per_layer(),
                }
            )
        )
        return
    fp = plan.model
    click.echo(
        f"plan for {fp.architecture or 'unknown architecture'}: {fp.num_layers} layers x "
        f"{fp.num_key_value_heads} KV heads ({fp.num_attention_heads} query heads), sink {plan.sink}, block {plan.block}"
    )
    if plan.provenance.method or plan.provenance.notes:
        click.echo(
            f"made by {plan.provenance.creator} {plan.provenance.creator_version}: "
            f"{plan.provenance.method or ''} {plan.provenance.notes or ''}".rstrip()
        )
    click.echo("")
    click.echo("layer  rules (alpha + beta*N) -> KV heads")
    for layer, row in enumerate(plan.rules):
        groups: dict[tuple[float, float], list[int]] = {}
        for head, rule in enumerate(row):
            groups.setdefault((rule.alpha, rule.beta), []).append(head)
        text = "; ".join(f"({a:g}, {b:g}) x{len(h)}" for (a, b), h in sorted(groups.items()))
        click.echo(f"{layer:>5}  {text}")
    click.echo("")
    click.echo(f"{'N':>8}  {'KV density':>10}  {'attn density':>12}  {'mean span':>10}")
    for n in lengths:
        click.echo(f"{n:>8}  {densities[n]:>10.4f}  {plan.attention_density(n):>12.4f}  {plan.spans(n).mean():>10.1f}")


@plan_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--model", help="Model directory, config.json or .gguf file the plan must fit.")
@click.option("--budget", type=float, help="Upper bound on mean KV density at every --lengths.")
@click.option("--lower", type=float, default=0.0, show_default=True, help="Lower bound on mean KV density.")
@click.option("--lengths", type=LengthList(), default=",".join(map(str, DEFAULT_LENGTHS)), show_default=True)
@click.option("--max-rules-per-layer", type=click.IntRange(min=1), help="Most distinct rules in a layer.")
def validate(
    path: Path,
    model: str | None,
    budget: float | None,
    lower: float,
    lengths: list[int],
    max_rules_per_layer: int | None,
) -> None:
    """Check a plan file: schema, model fit and (with --budget) every budget constraint."""
    plan = _load_any(path, model)
    if budget is not None or max_rules_per_layer is not None:
        problems = check_budget(
            plan,
            Budget(
                lengths=lengths,
                upper=budget if budget is not None else 1.0,
                lower=lower,
                max_rules_per_layer=max_rules_per_layer,
            ),
        )
        if problems:
            raise PlanError(
                f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            )
    click.echo(f"{path}: ok")


@plan_group.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--from", "from_format", type=click.Choice(["moa-json"]), help="Import from the original MoA format.")
@click.option("--to", "to_format", type=click.Choice(["moa-json"]), help="Export to the original MoA format.")
@click.option("--model", help="Model directory, config.json or .gguf file (needed for GQA models when importing).")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output file.")
def convert(source: Path, from_format: str | None, to_format: str | None, model: str | None, out: Path) -> None:
    """Convert between moa plans and the original MoA alphas/betas JSON."""
    if (from_format is None) == (to_format is None):
        raise click.UsageError("give exactly one of --from moa-json or --to moa-json")
    if from_format:
        plan = import_moa_json(source, _load_model(model))
        plan.save(out)
    else:
        export_moa_json(Plan.load(source), out)
    click.echo(f"wrote {out}")


@plan_group.command("schema")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Write to a file instead of stdout.")
def schema(out: Path | None) -> None:
    """Print the plan JSON Schema."""
    from moa_plan.schema import plan_schema_json

    text = plan_schema_json()
    if out is None:
        click.echo(text, nl=False)
    else:
        from moa_plan.io import atomic_write_text

        atomic_write_text(out, text)


def _write_baseline(plan: Plan, out: Path) -> None:
    plan.save(out)
    click.echo(f"wrote {out}: density {', '.join(f'{plan.density(n):.3f}@{n}' for n in DEFAULT_LENGTHS)}")


@plan_group.command("dense")
@click.option("--model", required=True, help="Model directory, config.json or .gguf file.")
@click.option("--sink", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True)
def dense(model: str, sink: int, block: int, out: Path) -> None:
    """Write a dense plan (every head keeps every token) for a model."""
    _write_baseline(Plan.dense(ModelFingerprint.from_model_path(model), sink=sink, block=block), out)


@plan_group.command("uniform")
@click.option("--model", required=True, help="Model directory, config.json or .gguf file.")
@click.option("--fraction", type=click.FloatRange(min=0.0, max=1.0, min_open=True), required=True)
@click.option("--sink", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True)
def uniform(model: str, fraction: float, sink: int, block: int, out: Path) -> None:
    """Write a uniform (StreamingLLM-style) plan: every head spans FRACTION of the length."""
    plan = Plan.uniform(ModelFingerprint.from_model_path(model), fraction, sink=sink, block=block)
    _write_baseline(plan, out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
