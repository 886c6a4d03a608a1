"""``moa calibrate`` and ``moa profile`` (entry-point group ``moa.commands``), also ``python -m moa_profiler``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch

from moa_plan import MoaError
from moa_plan.cli import LengthList, MoaCommandError
from moa_profiler.models import DTYPES
from moa_profiler.options import statistic_options

__all__ = ["calibrate", "cli", "profile"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoaError as exc:
            raise MoaCommandError(str(exc)) from None


@click.group(cls=_Group)
def cli() -> None:
    """moa-profiler: calibration sets and attention-influence profiles (torchrun-ready)."""


def _device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _device_map(value: str | None) -> str | dict[str, Any] | None:
    """``--device-map``: a strategy name, or a JSON file mapping module names to devices."""
    if value is None or value in DEVICE_MAP_STRATEGIES:
        return value
    path = Path(value)
    if not path.is_file():
        raise MoaCommandError(
            f"--device-map {value}: neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) nor a JSON file"
        )
    try:
        mapping = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoaCommandError(f"--device-map {value}: not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
        raise MoaCommandError(f"--device-map {value}: expected a JSON object {{module name: device}}")
    return mapping


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call library code, turning MoaError into the one-line exit-2 error (also when not under `moa`)."""
    try:
        return fn(*args, **kwargs)
    except MoaError as exc:
        raise MoaCommandError(str(exc)) from None


def _calibration_inputs(
    tokenizer: Any,
    records: Path | None,
    task: str | None,
    lengths: list[int],
    num_samples: int,
    seed: int,
    template: str,
    system: str | None,
    lines: int | None = None,
    margin: int | None = None,
) -> tuple[list[Any], str]:
    """Records from a file, or from a synthetic task drawn a little above each length; and their source.

    ``lines`` (recall tasks only) is the number of lines per record; ``margin`` the tokens drawn above each
    length before calibration cuts the record's middle to fit it (default ``max(16, N / 32)``).
    """
    from moa_plan import Record
    from moa_profiler.calibration import encode_prompt
    from moa_profiler.records import load_records, task_records

    if records is not None:
        if lines is not None or margin is not None:
            raise click.UsageError("--lines and --margin shape --task records; a --records file is used as it is")
        return _run(load_records, records), str(records)
    if lines is not None:
        try:
            from moa_plan.tasks.facts import RECALL_TASKS
        except ImportError:  # no synthetic tasks at all: task_records says so below
            RECALL_TASKS = ()
        other = [t.strip() for t in str(task).split(",") if t.strip() and t.strip() not in RECALL_TASKS]
        if other and RECALL_TASKS:
            raise click.UsageError(
                f"--lines applies to the recall tasks ({', '.join(RECALL_TASKS)}), not to {', '.join(other)}"
            )
    probe = _run(encode_prompt, tokenizer, Record(task="probe", context="x"), template=template, system=system)
    inputs = _run(
        task_records,
        str(task),
        # A small margin above each length: the record then fills it after its middle is cut.
        [n + (max(16, n // 32) if margin is None else margin) for n in lengths],
        num_samples,
        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
        overhead=probe.overhead,
        seed=seed,
        options={} if lines is None else {"lines": lines},
    )
    shape = "" if lines is None else f" lines={lines}"
    shape += "" if margin is None else f" margin={margin}"
    return inputs, f"moa_plan.tasks:{task} seed={seed}{shape}"


@cli.command("calibrate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Local model directory.")
@click.option("--records", type=click.Path(path_type=Path), help="Records file (.jsonl or .parquet).")
@click.option(
    "--task",
    help="Synthetic task(s) of moa_plan.tasks instead of --records, comma-separated (e.g. rewrite,multikey).",
)
@click.option(
    "--num-samples", type=click.IntRange(min=1), default=8, show_default=True, help="Per length and task, with --task."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --task records.")
@click.option(
    "--lines",
    type=click.IntRange(min=1),
    help="Lines per record of the recall tasks (facts, quotes, items, codes; default 4: the asked line among three "
    "others). 1: one line at any depth, a single fact as NIAH and passkey hold.",
)
@click.option(
    "--margin",
    type=click.IntRange(min=0),
    help="Tokens a --task record is drawn above each length before its middle is cut to fit (default max(16, N/32)); "
    "more when a record comes out shorter than its length.",
)
@click.option("--lengths", type=LengthList(), default="512,1024,2048", show_default=True, help="Exact sample lengths.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Answer cap.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--template", type=click.Choice(["chat", "plain"]), default="chat", show_default=True)
@click.option("--system", help="System message for the chat template.")
@click.option(
    "--max-cut", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True, help="Most context a fit may cut."
)
@click.option(
    "--fit",
    type=click.Choice(["each", "largest"]),
    help="each: a record feeds every length it can fill, cut to each (MoA's way with documents; default with "
    "--records). largest: only the largest length it fills (default with --task, whose records are drawn per length).",
)
@click.option("--skip-unfit", is_flag=True, help="Drop records that fit no length instead of failing.")
@click.option("--max-per-bucket", type=click.IntRange(min=1), help="Keep at most this many samples per length.")
@click.option(
    "--answers",
    type=click.Choice(["model", "reference"]),
    default="model",
    show_default=True,
    help="model: the model's greedy answers (model alignment, MoA). reference: each record's reference answer "
    "(the asked line's value in facts/quotes/items/codes), nothing generated.",
)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--device-map",
    help="Split the layers over this node's GPUs: auto, balanced, sequential, or a JSON file "
    "{module: device} (needs moa-profiler[multi-gpu]; replaces --device).",
)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Calibration Parquet file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def calibrate(
    model_path: Path,
    records: Path | None,
    task: str | None,
    num_samples: int,
    seed: int,
    lines: int | None,
    margin: int | None,
    lengths: list[int],
    max_new_tokens: int,
    batch_size: int,
    template: str,
    system: str | None,
    max_cut: float,
    fit: str | None,
    skip_unfit: bool,
    max_per_bucket: int | None,
    answers: str,
    dtype: str,
    device: str,
    device_map: str | None,
    out: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build a model-aligned calibration set: the model answers each record, fitted to exact LENGTHS."""
    from moa_profiler.calibration import CalibrationSettings, build_calibration
    from moa_profiler.dataset import CalibrationSet, write_calibration
    from moa_profiler.models import fingerprint_of, load_model, load_tokenizer, versions

    if (records is None) == (task is None):
        raise click.UsageError("give exactly one of --records or --task")
    if quiet:
        _quiet_transformers()
    tokenizer = _run(load_tokenizer, model_path)
    settings = CalibrationSettings(
        buckets=tuple(lengths),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        template=template,
        max_cut=max_cut,
        skip_unfit=skip_unfit,
        max_per_bucket=max_per_bucket,
        system=system,
        fit=fit or ("each" if records is not None else "largest"),
        answers=answers,
    )
    inputs, source = _calibration_inputs(
        tokenizer, records, task, lengths, num_samples, seed, template, system, lines=lines, margin=margin
    )
    model = _run(load_model, model_path, dtype=dtype, device=_device(device), device_map=_device_map(device_map))
    samples = _run(build_calibration, model, tokenizer, inputs, settings, source=source, progress=not quiet)
    provenance = {
        "fingerprint": fingerprint_of(model).model_dump(),
        "model": str(model_path),
        "source": source,
        "versions": versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "answers": "model, greedy" if answers == "model" else "reference",
        "max_new_tokens": max_new_tokens,
        "template": template,
        "lengths": sorted(set(lengths)),
        "fit": settings.fit,
    }
    _run(write_calibration, out, CalibrationSet(samples=samples, provenance=provenance))
    per_length = {n: sum(s.bucket == n for s in samples) for n in sorted(set(lengths))}
    sizes = [s.answer_end - s.answer_start for s in samples]
    if as_json:
        click.echo(
            json.dumps({"path": str(out), "samples": len(samples), "per_length": per_length, "answer_tokens": sizes})
        )
        return
    click.echo(f"{'length':>8}  {'samples':>7}")
    for n, count in per_length.items():
        click.echo(f"{n:>8}  {count:>7}")
    click.echo(f"wrote {out}: {len(samples)} samples, answers of {min(sizes)}..{max(sizes)} tokens")


@cli.command("profile")
@click.argument("calibration", type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Local model directory.")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), required=True, help="Directory for profile-<N>.safetensors."
)
@click.option("--lengths", type=LengthList(), help="Lengths to profile (default: every length in the file).")
@click.option("--sink", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--block-map/--no-block-map", default=False, show_default=True, help="Also store the 2-D block map.")
@statistic_options
@click.option(
    "--greedy-from",
    type=click.Path(path_type=Path),
    help="Start the greedy search from a saved path (a profile-<N>.greedy.json, or the directory of an earlier "
    "--out): with a larger --greedy-stop it goes on where that search stopped; with one already reached it "
    "rebuilds the profile without a forward pass. Same samples, sink and block.",
)
@click.option(
    "--gate-from",
    type=click.Path(path_type=Path),
    help="Take the gates of an earlier --statistic gate run (a profile-<N>.gates.json, or the directory of its "
    "--out) instead of training them: the profile is rebuilt without a forward pass. Same samples, sink, block "
    "and gate settings.",
)
@click.option("--gate-seed", type=int, default=0, show_default=True, help="Seed of the sample order.")
@click.option(
    "--ablation-points",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most windows measured per KV head with --statistic ablation.",
)
@click.option("--max-samples", type=click.IntRange(min=1), help="At most this many samples per length.")
@click.option(
    "--chunk-elements",
    type=click.IntRange(min=1),
    help="Bound of one [HQ, rows, N] chunk (default 2^22 CPU, 2^25 CUDA).",
)
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), help="Default: OUT/.checkpoints.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--restart", is_flag=True, help="Ignore existing checkpoints.")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--device-map",
    help="Split the layers over this node's GPUs: auto, balanced, sequential, or a JSON file "
    "{module: device} (needs moa-profiler[multi-gpu]; replaces --device).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def profile(
    calibration: Path,
    model_path: Path,
    out: Path,
    lengths: list[int] | None,
    sink: int,
    block: int,
    block_map: bool,
    statistic: str,
    greedy_group: int,
    greedy_stop: float,
    greedy_lazy: bool,
    greedy_from: Path | None,
    gate_from: Path | None,
    gate_steps: int,
    gate_lr: float,
    gate_penalty: float,
    gate_seed: int,
    ablation_points: int,
    max_samples: int | None,
    chunk_elements: int | None,
    checkpoint_dir: Path | None,
    checkpoint_every: int,
    restart: bool,
    dtype: str,
    device: str,
    device_map: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Profile attention influence per layer and query head at each length of CALIBRATION.

    Under ``torchrun --nproc-per-node K -m moa_profiler profile ...`` the samples are sharded over
    ranks and the sums all-reduced; rank 0 writes the files.
    """
    from moa_profiler.attention import register_profiling_attention
    from moa_profiler.dataset import read_calibration
    from moa_profiler.distributed import init_world
    from moa_profiler.models import fingerprint_of, load_model, versions
    from moa_profiler.run import RunSettings, profile_length
    from moa_profiler.sample import InfluenceSettings, prepare_model

    logging.basicConfig(level=logging.WARNING)
    if quiet:
        _quiet_transformers()
    if greedy_from is not None and statistic != "greedy":
        raise MoaCommandError("--greedy-from continues a greedy search; add --statistic greedy")
    if greedy_from is not None and not greedy_from.exists():
        raise MoaCommandError(f"--greedy-from {greedy_from} does not exist")
    if gate_from is not None and statistic != "gate":
        raise MoaCommandError("--gate-from takes the gates of an earlier training; add --statistic gate")
    if gate_from is not None and not gate_from.exists():
        raise MoaCommandError(f"--gate-from {gate_from} does not exist")
    calib = _run(read_calibration, calibration)
    wanted = lengths or calib.lengths()
    missing = [n for n in wanted if n not in calib.lengths()]
    if missing:
        raise MoaCommandError(f"{calibration} has no samples of length {missing[0]} (it has {calib.lengths()})")
    world = init_world(cuda=device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()))
    if device_map is not None and world.size > 1:
        raise MoaCommandError(
            "--device-map splits one model copy over a node's GPUs; do not combine it with torchrun ranks"
        )
    model = _run(
        load_model,
        model_path,
        dtype=dtype,
        device=_device(device, world.local_rank),
        device_map=_device_map(device_map),
    )
    fp = fingerprint_of(model)
    recorded = calib.fingerprint
    if recorded is not None and recorded.differences(fp):
        raise MoaCommandError(
            f"{calibration} was answered by another model: {'; '.join(recorded.differences(fp)).replace('plan has', 'calibration has')}"
        )
    register_profiling_attention()
    prepare_model(model)
    settings = RunSettings(
        influence=_run(
            InfluenceSettings,
            sink=sink,
            block=block,
            block_map=block_map,
            max_elements=chunk_elements,
            statistic=statistic,
            ablation_points=ablation_points,
            greedy_group=greedy_group,
            greedy_stop=greedy_stop,
            greedy_lazy=greedy_lazy,
            gate_steps=gate_steps,
            gate_lr=gate_lr,
            gate_penalty=gate_penalty,
            gate_seed=gate_seed,
        ),
        checkpoint_dir=checkpoint_dir or out / ".checkpoints",
        checkpoint_every=checkpoint_every,
        restart=restart,
        progress=not quiet,
        versions=versions(),
        greedy_from=greedy_from,
        gate_from=gate_from,
    )
    summaries = []
    for n in wanted:
        samples = calib.at_length(n)[:max_samples]
        summaries.append(_run(profile_length, model, fp, samples, n, out / f"profile-{n}.safetensors", settings, world))
    if not world.is_main:
        return
    _print_summaries(summaries, out, as_json)


def _print_summaries(summaries: list[Any], out: Path, as_json: bool) -> None:
    """The end table (median d: distance within which half the non-sink influence lies), or JSON."""
    if as_json:
        click.echo(json.dumps({"profiles": [asdict(s) for s in summaries]}))
        return
    click.echo(
        f"{'length':>8} {'samples':>7} {'loss':>8} {'sink share':>10} {'median d':>9} {'seconds':>8} {'peak MiB':>9}"
    )
    for s in summaries:
        click.echo(
            f"{s.length:>8} {s.samples:>7} {s.mean_loss:>8.4f} {s.sink_share:>10.3f} {s.median_distance:>9} "
            f"{s.seconds:>8.1f} {s.peak_rss_mib:>9.0f}"
        )
    click.echo(f"wrote {len(summaries)} profile(s) to {out}")
