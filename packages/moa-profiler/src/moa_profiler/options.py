"""The profile statistic's command-line options, shared by ``moa profile`` and ``moa compress``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

__all__ = ["STATISTICS", "statistic_options"]

STATISTICS = ("influence", "ablation", "greedy", "gate")

F = TypeVar("F", bound=Callable[..., object])

_OPTIONS = (
    click.option(
        "--statistic",
        type=click.Choice(STATISTICS),
        default="influence",
        show_default=True,
        help="influence: MoA's first-order |E| (one backward per sample). ablation: the measured loss of cutting "
        "each KV head to sink + window (layers x KV heads x a few forwards per sample, `moa profile --ablation-points`; small models). "
        "greedy: cut heads to sink + one block cheapest first, measuring each cut on top of the cuts before it "
        "(captures heads that only matter together; see --greedy-group, --greedy-stop). "
        "gate: train one gate per KV head between its full and its sink + one block attention, under a growing "
        "L1 penalty (DuoAttention's training; --gate-steps forward+backward passes in all; see --gate-penalty).",
    ),
    click.option(
        "--greedy-group",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Greedy statistic: KV heads cut per round (0: an eighth of them).",
    ),
    click.option(
        "--greedy-stop",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.75,
        show_default=True,
        help="Greedy statistic: fraction of the KV heads it cuts before it stops.",
    ),
    click.option(
        "--greedy-lazy/--greedy-exact",
        default=False,
        show_default=True,
        help="Greedy statistic, lazy: from the second round on, measure only the heads whose last marginal could "
        "still make them among the cheapest (about 2 x --greedy-group per round instead of every remaining head).",
    ),
    click.option(
        "--gate-steps",
        type=click.IntRange(min=1),
        default=300,
        show_default=True,
        help="Gate statistic: training steps (one calibration sample each, cycled).",
    ),
    click.option(
        "--gate-lr",
        type=click.FloatRange(0, min_open=True),
        default=0.02,
        show_default=True,
        help="Gate statistic: Adam learning rate.",
    ),
    click.option(
        "--gate-penalty",
        type=click.FloatRange(0),
        default=0.5,
        show_default=True,
        help="Gate statistic: L1 penalty at the last step, nats per open KV head (it grows geometrically from "
        "1/256 of it).",
    ),
)


def statistic_options(command: F) -> F:
    """Add ``--statistic`` and the greedy and gate settings (in this order in ``--help``) to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
