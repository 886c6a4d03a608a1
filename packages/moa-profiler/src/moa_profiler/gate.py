"""The gate statistic: learn, per KV head, whether the answers need its whole context (DuoAttention's way).

Every KV head gets a gate ``g`` in [0, 1] that mixes its full causal attention with its attention cut
to the sink + one block (`moa_profiler.attention.gating`): ``g = 1`` is the dense model, ``g = 0`` the
head cut. All gates start at 1 and are trained together, by gradient, to keep the calibration answers'
loss low while an L1 penalty ``lambda x sum(g)`` pushes them shut (DuoAttention's gate training,
with the answer-token cross-entropy of every other statistic as its loss). The penalty grows
geometrically over the ``gate_steps`` steps, from ``gate_penalty / 256`` to ``gate_penalty`` nats per
head (`penalty_at`), so each head's gate closes at the price its answers put on it: a head nothing
needs closes at once, one the answers lean on stays open until the penalty outweighs it. A head's
value is the penalty it withstood, ``sum_t g_t x (lambda_t - lambda_{t-1})``: for a gate that stays
open until the penalty reaches ``lambda_c`` and then shuts, ``lambda_c`` (nats), the price of cutting
it. Unlike the one-head ablation the gates are learnt *together* (a head that only matters when others are cut stays open),
and unlike the greedy search the cost does not grow with the number of heads: one forward (two
attentions per layer) and one backward per step, with one sample per step (cycled in a seeded
order). The optimizer gets the values as a one-window ablation profile (`ablation_histogram`).

Steps are checkpointed (gates, Adam moments, the penalty each gate withstood so far, losses), so an interrupted run resumes at
the step it was in and gives the same gates as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from moa_plan import atomic_write_text
from moa_profiler.attention import gating
from moa_profiler.checkpoint import load_state
from moa_profiler.errors import ProfilerError
from moa_profiler.greedy import check_record
from moa_profiler.sample import InfluenceSettings, answer_loss, head_counts

__all__ = ["GateRun", "load_gate_run", "penalty_at", "train_gates"]

Sample = tuple[torch.Tensor, int, int]


# The penalty starts this many times below its last value.
PENALTY_RANGE = 256.0


def penalty_at(step: int, steps: int, penalty: float) -> float:
    """The L1 penalty (nats per open head) of step ``step`` (0-based) of ``steps``: geometric up to ``penalty``."""
    return penalty * PENALTY_RANGE ** ((step + 1) / steps - 1.0)


class GateRun:
    """The learnt gates, each head's value (price of cutting it, nats), and the answer loss of every step."""

    def __init__(self, gates: torch.Tensor, values: dict[tuple[int, int], float], losses: list[float]) -> None:
        self.gates, self.values, self.losses = gates, values, losses

    def to_json(self) -> dict[str, object]:
        return {
            "gates": self.gates.tolist(),
            "values": [[h[0], h[1], v] for h, v in self.values.items()],
            "losses": self.losses,
        }


def train_gates(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    settings: InfluenceSettings,
    *,
    checkpoint: Path | None = None,
    key: str = "",
    progress: Callable[[str], None] | None = None,
    every: int = 10,
) -> GateRun:
    """Train one gate per KV head on ``samples`` (``(ids, answer start, answer stop)``), see the module docstring.

    Args:
        model: Prepared with `moa_profiler.sample.prepare_model` (frozen, profiling attention).
        samples: The calibration samples (any lengths; one per step).
        settings: Sink and block (the cut is the sink + one block), ``gate_steps``, ``gate_lr``,
            ``gate_penalty`` and ``gate_seed``.
        checkpoint: JSON file of the run's state, written every ``every`` steps (None: none).
        key: Identifies the run; a checkpoint with another key is ignored.
        progress: Called with a line every ``every`` steps.

    Raises:
        ProfilerError: no samples, or an answer loss that is not finite.
    """
    if not samples:
        raise ProfilerError("the gate statistic needs at least one calibration sample")
    layers, _, kv_heads = head_counts(model)
    steps, penalty = settings.gate_steps, settings.gate_penalty
    gates = torch.ones(layers, kv_heads, dtype=torch.float32)
    area = torch.zeros(layers, kv_heads, dtype=torch.float64)  # the penalty each gate withstood so far
    losses: list[float] = []
    optimizer = torch.optim.Adam([gates.requires_grad_(True)], lr=settings.gate_lr)
    state = load_state(checkpoint, key, "gate")
    if state:
        with torch.no_grad():
            gates.copy_(torch.tensor(state["gates"], dtype=torch.float32))
        area = torch.tensor(state["area"], dtype=torch.float64)
        losses = [float(x) for x in state["losses"]]
        optimizer.state[gates] = {
            "step": torch.tensor(float(len(losses))),
            "exp_avg": torch.tensor(state["exp_avg"], dtype=torch.float32),
            "exp_avg_sq": torch.tensor(state["exp_avg_sq"], dtype=torch.float32),
        }
    order = _order(len(samples), steps, settings.gate_seed)
    window, sink = settings.block, settings.sink
    for step in range(len(losses), steps):
        ids, start, stop = samples[order[step]]
        weight = penalty_at(step, steps, penalty)
        before = penalty_at(step - 1, steps, penalty) if step else 0.0
        with torch.enable_grad(), gating(gates, window, sink):
            loss = answer_loss(model, ids, start, stop)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ProfilerError(f"the answer loss is {value} at gate step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            (loss + weight * gates.sum()).backward()
        optimizer.step()
        with torch.no_grad():
            gates.clamp_(0.0, 1.0)
        area += gates.detach().double() * (weight - before)
        losses.append(value)
        if (step + 1) % every == 0 or step + 1 == steps:
            _save(checkpoint, key, gates, area, losses, optimizer)
            if progress is not None:
                recent = losses[-every:]
                progress(
                    f"gate step {step + 1}/{steps}: penalty {weight:.4f} nats/head, answer loss "
                    f"{sum(recent) / len(recent):.4f} (last {len(recent)}), mean gate {float(gates.detach().mean()):.3f}, "
                    f"{int((gates > 0.5).sum())} of {gates.numel()} open"
                )
    final = gates.detach().clone()
    values = {(layer, kv): float(area[layer, kv]) for layer in range(layers) for kv in range(kv_heads)}
    return GateRun(final, values, losses)


def _order(count: int, steps: int, seed: int) -> list[int]:
    """Sample index of every step: the samples in a seeded random order, reshuffled each pass."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps:
        epoch = list(range(count))
        rng.shuffle(epoch)
        order += epoch
    return order[:steps]


def _save(
    checkpoint: Path | None,
    key: str,
    gates: torch.Tensor,
    area: torch.Tensor,
    losses: list[float],
    optimizer: torch.optim.Optimizer,
) -> None:
    if checkpoint is None:
        return
    moments = optimizer.state[gates]
    record = {
        "key": key,
        "gates": gates.detach().tolist(),
        "area": area.tolist(),
        "losses": losses,
        "exp_avg": moments["exp_avg"].tolist(),
        "exp_avg_sq": moments["exp_avg_sq"].tolist(),
    }
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(checkpoint, json.dumps(record))


def load_gate_run(file: Path, *, layers: int, kv_heads: int, expect: dict[str, object] | None = None) -> GateRun:
    """The gates of an earlier training (a ``profile-<N>.gates.json``), checked against this model and run.

    ``expect``: settings the gates must have been trained with (``length``, ``sink``, ``block``,
    ``samples``, ``steps``, ``lr``, ``penalty``, ``seed``); a record without one of them is taken as it
    is, with a warning.

    Raises:
        ProfilerError: unreadable, not a gates record, a KV head this model lacks or one without a value,
            a value that is not finite, or trained with other settings.
    """
    try:
        data = json.loads(file.read_text())
        values = {(int(h[0]), int(h[1])): float(h[2]) for h in data["values"]}
        losses = [float(x) for x in data["losses"]]
        gates = torch.tensor(data["gates"], dtype=torch.float32)
    except OSError as exc:
        raise ProfilerError(f"cannot read the gates {file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError):
        raise ProfilerError(f"{file} is not a gates record (a JSON object with gates, values and losses)") from None
    if tuple(gates.shape) != (layers, kv_heads):
        raise ProfilerError(
            f"{file} has gates for {tuple(gates.shape)} KV heads, not this model's ({layers} layers x {kv_heads})"
        )
    check_record(
        file, data, list(values), values, losses, layers=layers, kv_heads=kv_heads, expect=expect, verb="trained"
    )
    return GateRun(gates, values, losses)
