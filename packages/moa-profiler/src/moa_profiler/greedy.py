"""The greedy statistic: cut KV heads to the sink + one block, cheapest first, by measured answer loss.

MoA's first-order influence and the one-head ablation both score each head alone, as if cuts
added up. They do not: a small model spreads a far fact over many heads, so each cut alone looks
free while many cuts together lose it. The greedy search measures cuts *together*: in each round,
on top of the heads already cut, it measures the mean answer loss over the samples of cutting each
remaining KV head too (one forward per head and sample), then cuts the ``group`` cheapest and
goes on, until ``stop`` of the heads are cut. A head's value is its measured marginal loss in the
round it was cut (heads never cut keep their last, largest marginal), so the values along the
greedy path add up to the measured loss of cutting them all; the optimizer gets them as a
one-window ablation profile (`ablation_histogram`).

Cost: about ``heads x (1 + (1 - stop)) / 2 x heads / group`` forwards per sample (the layers below
the cut one are reused from the round's uncut forward, about half of each). ``greedy_lazy`` measures,
from the second round on, only the heads whose previous marginal could still make them among the
cheapest (`_lazy_round`, the lazy greedy of submodular maximisation): about ``2 x group`` per round,
the same path whenever a cut never gets cheaper after other cuts. Rounds are checkpointed, so an
interrupted search resumes at the round it was in, and a finished one can be *extended*: started
from its saved path (``start``, `load_greedy_path`), a search with a larger ``stop`` goes on where it
ended, and one whose stop is already reached rebuilds the profile without a forward pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from moa_plan import atomic_write_text
from moa_profiler.attention import masking
from moa_profiler.checkpoint import load_state
from moa_profiler.errors import ProfilerError
from moa_profiler.sample import InfluenceSettings, Reuse, answer_loss, decoder_layers, head_counts

__all__ = ["GreedyPath", "ablation_histogram", "greedy_path", "load_greedy_path"]

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, int, int]


class GreedyPath:
    """The order in which heads were cut, each head's marginal loss, and the loss after each round."""

    def __init__(self, values: dict[tuple[int, int], float], order: list[tuple[int, int]], losses: list[float]) -> None:
        self.values, self.order, self.losses = values, order, losses

    def to_json(self) -> dict[str, object]:
        return {
            "order": [list(h) for h in self.order],
            "values": [[h[0], h[1], v] for h, v in self.values.items()],
            "losses": self.losses,
        }


def _cuts(heads: Sequence[tuple[int, int]], window: int, sink: int) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for layer, kv in heads:
        stack.enter_context(masking(layer, kv, window, sink))
    return stack


def greedy_path(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    settings: InfluenceSettings,
    *,
    checkpoint: Path | None = None,
    key: str = "",
    progress: Callable[[str], None] | None = None,
    start: GreedyPath | None = None,
) -> GreedyPath:
    """Run the greedy search over ``samples`` (``(ids, answer start, answer stop)`` of one length).

    ``start``: a path of an earlier search on the same samples, sink and block; the search continues it
    (a checkpoint of this run, if any, wins).

    Raises:
        ProfilerError: if a loss is not finite or the checkpoint belongs to another run.
    """
    layers, _, kv_heads = head_counts(model)
    everyone = [(layer, kv) for layer in range(layers) for kv in range(kv_heads)]
    group = settings.greedy_group or max(1, math.ceil(len(everyone) / 8))
    target = min(len(everyone) - 1, round(settings.greedy_stop * len(everyone)))
    window, sink = settings.block, settings.sink
    state: dict[str, Any] = load_state(checkpoint, key, "greedy") or (start.to_json() if start is not None else {})
    values = {(int(h[0]), int(h[1])): float(h[2]) for h in state.get("values", [])}
    order = [(int(h[0]), int(h[1])) for h in state.get("order", [])]
    losses = [float(x) for x in state.get("losses", [])]
    found = decoder_layers(model)

    def loss(ids: torch.Tensor, start: int, stop: int) -> float:
        value = float(answer_loss(model, ids, start, stop))
        if not math.isfinite(value):
            raise ProfilerError(f"the answer loss is {value} with {len(order)} heads cut")
        return value

    with torch.no_grad():
        while len(order) < target:
            remaining = [h for h in everyone if h not in set(order)]
            take_n = min(group, target - len(order))
            with _cuts(order, window, sink):
                bases = [_base(model, found, layers, x, loss) for x in samples]

                def measure(
                    heads: Sequence[tuple[int, int]], bases: list[tuple[float, Reuse | None]] = bases
                ) -> dict[tuple[int, int], float]:
                    trial = dict.fromkeys(heads, 0.0)
                    for (ids, start, stop), (base, reuse) in zip(samples, bases, strict=True):
                        for layer, kv in heads:
                            skip = reuse.skip(layer) if reuse is not None else contextlib.nullcontext()
                            with masking(layer, kv, window, sink), skip:
                                trial[(layer, kv)] += loss(ids, start, stop) - base
                    return {h: v / len(samples) for h, v in trial.items()}

                stale = losses and settings.greedy_lazy and all(h in values for h in remaining)
                trial = _lazy_round(remaining, values, take_n, group, measure) if stale else measure(remaining)
            ranked = sorted(trial, key=lambda h: (trial[h], h))
            take = ranked[:take_n]
            values.update(trial)
            order += take
            losses.append(sum(base for base, _ in bases) / len(samples))
            if progress is not None:
                progress(
                    f"greedy round {len(losses)}: loss {losses[-1]:.4f} with {len(order) - len(take)} cut; "
                    f"{len(trial)} heads measured; cut {len(take)} more "
                    f"(marginal {values[take[0]]:+.4f} .. {values[take[-1]]:+.4f})"
                )
            _save(checkpoint, key, GreedyPath(values, order, losses))
    return GreedyPath(values, order, losses)


def _base(
    model: torch.nn.Module, found: torch.nn.ModuleList | None, layers: int, sample: Sample, loss: Callable[..., float]
) -> tuple[float, Reuse | None]:
    """The loss of ``sample`` with the cuts so far, and the layer outputs recorded for reuse (None: not reusable)."""
    ids, start, stop = sample
    reuse = Reuse(found) if found is not None and len(found) == layers else None
    handles = reuse.recording() if reuse is not None else []
    try:
        base = loss(ids, start, stop)
    finally:
        for handle in handles:
            handle.remove()
    return base, reuse if reuse is not None and reuse.usable else None


def _lazy_round(
    remaining: Sequence[tuple[int, int]],
    stale: dict[tuple[int, int], float],
    take: int,
    chunk: int,
    measure: Callable[[Sequence[tuple[int, int]]], dict[tuple[int, int], float]],
) -> dict[tuple[int, int], float]:
    """Measure the remaining heads cheapest-stale-first, ``chunk`` at a time, until the ``take`` cheapest measured
    cost no more than the stale (previous-round) marginal of every head not yet measured.

    If cutting more heads never makes a cut cheaper (a stale marginal is a lower bound on the fresh one),
    the heads chosen are those the exact round would choose; the round measures about ``2 x take`` heads
    instead of all of them.
    """
    queue = sorted(remaining, key=lambda h: (stale[h], h))
    fresh: dict[tuple[int, int], float] = {}
    done = 0
    while done < len(queue):
        fresh |= measure(queue[done : done + chunk])
        done = min(done + chunk, len(queue))
        best = sorted(fresh.values())[:take]
        if len(best) == take and (done == len(queue) or best[-1] <= stale[queue[done]]):
            break
    return fresh


def ablation_histogram(
    values: Mapping[tuple[int, int], float],
    layers: int,
    heads: int,
    kv_heads: int,
    length: int,
    settings: InfluenceSettings,
) -> torch.Tensor:
    """``[L, HQ, T - S]`` histogram: each KV head's value (a greedy marginal, a gate's price; >= 0) at window ``block``,
    tapering to 0 at ``T - S``.

    Tail sums from any distance ``d <= block`` give the head's value; wider windows cost linearly
    less, down to 0 for the whole head (as a one-window ablation profile).
    """
    keys = max(length - settings.sink, 1)
    group = heads // kv_heads
    hist = torch.zeros(layers, heads, keys, dtype=torch.float64)
    w = min(settings.block, keys - 1)
    for (layer, kv), value in values.items():
        hist[layer, kv * group : (kv + 1) * group, w:] = max(value, 0.0) / (group * (keys - w))
    return hist


def load_greedy_path(file: Path, *, layers: int, kv_heads: int, expect: dict[str, object] | None = None) -> GreedyPath:
    """A path saved by an earlier search (``profile-<N>.greedy.json``), checked against this model.

    ``expect``: settings the path must have been measured with (``length``, ``sink``, ``block``,
    ``samples``); a file that does not record one of them is taken as it is, with a warning.

    Raises:
        ProfilerError: unreadable, not a greedy path, a head this model lacks, a head cut twice or without a
            value, or measured with other settings.
    """
    try:
        data = json.loads(file.read_text())
        order = [(int(h[0]), int(h[1])) for h in data["order"]]
        values = {(int(h[0]), int(h[1])): float(h[2]) for h in data["values"]}
        losses = [float(x) for x in data["losses"]]
    except OSError as exc:
        raise ProfilerError(f"cannot read the greedy path {file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError):
        raise ProfilerError(f"{file} is not a greedy path (a JSON object with order, values and losses)") from None
    if len(set(order)) != len(order):
        raise ProfilerError(f"{file} cuts a KV head twice")
    check_record(file, data, [*order, *values], values, losses, layers=layers, kv_heads=kv_heads, expect=expect)
    return GreedyPath(values, order, losses)


def check_record(
    file: Path,
    data: Mapping[str, Any],
    heads: Sequence[tuple[int, int]],
    values: Mapping[tuple[int, int], float],
    losses: Sequence[float],
    *,
    layers: int,
    kv_heads: int,
    expect: Mapping[str, object] | None,
    verb: str = "measured",
) -> None:
    """The checks every per-head record (a greedy path, a gate run) passes before it becomes a profile.

    Every KV head it names is one of this model's, every KV head has a value, values and losses are
    finite, and each ``expect`` setting the record holds equals it (one it lacks is taken, with a warning).

    Raises:
        ProfilerError: the first check that fails, in one sentence naming ``file``.
    """
    everyone = {(layer, kv) for layer in range(layers) for kv in range(kv_heads)}
    foreign = sorted(set(heads) - everyone)
    if foreign:
        raise ProfilerError(
            f"{file} has KV head {foreign[0]}, which this model ({layers} layers x {kv_heads} KV heads) lacks"
        )
    if not losses or any(not math.isfinite(x) for x in [*losses, *values.values()]):
        raise ProfilerError(f"{file} has no losses or a loss that is not finite")
    unvalued = sorted(everyone - set(values))
    if unvalued:
        raise ProfilerError(f"{file} has no value for KV head {unvalued[0]}")
    for name, want in (expect or {}).items():
        got = data.get(name)
        if got is None:
            logger.warning("%s does not record its %s; taking it as %s with %s", file, name, verb, want)
        elif got != want:
            raise ProfilerError(f"{file} was {verb} with {name} {got}, not {want}")


def _save(checkpoint: Path | None, key: str, path: GreedyPath) -> None:
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(checkpoint, json.dumps({"key": key, **path.to_json()}))
