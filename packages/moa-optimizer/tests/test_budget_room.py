"""How many KV heads a budget can keep whole at a length, against brute force over real plans."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from moa_optimizer import synthetic_fingerprint
from moa_optimizer.report import budget_room, format_room
from moa_plan import Plan, Provenance
from moa_plan.cli import main


def _whole_and_least(model, k: int, sink: int, block: int) -> Plan:
    """``k`` heads whole (rule (0, 1)), the rest at the cheapest rule (0, 0): the sink and one block."""
    layers, heads = model.num_layers, model.num_key_value_heads
    betas = np.zeros(layers * heads)
    betas[:k] = 1.0
    return Plan.from_arrays(model, np.zeros((layers, heads)), betas.reshape(layers, heads), sink=sink, block=block)


@pytest.mark.parametrize(
    ("sink", "block", "length", "upper"),
    [(64, 64, 1024, 0.25), (64, 64, 2048, 0.25), (64, 64, 1024, 0.125), (16, 32, 1024, 0.125), (4, 16, 700, 0.3)],
)
def test_room_is_the_largest_whole_count_within_the_budget(sink, block, length, upper):
    model = synthetic_fingerprint(6, 9, 3)
    heads = 6 * 3
    fits = [k for k in range(heads + 1) if _whole_and_least(model, k, sink, block).density(length) <= upper + 1e-12]
    expected = max(fits) if fits else 0
    assert budget_room(_whole_and_least(model, 0, sink, block), length, upper) == expected


def test_room_when_the_minimum_is_the_whole_length():
    model = synthetic_fingerprint(2, 4, 2)
    plan = _whole_and_least(model, 0, 64, 64)
    assert budget_room(plan, 128, 0.5) == 4  # every span is N: every head is whole whatever the budget


def test_optimize_prints_the_room_at_every_constrained_length(profile_files, tmp_path):
    result = CliRunner().invoke(
        main,
        ["optimize", "--profiles", *map(str, profile_files), "--density", "0.25", "--single", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    plan = Plan.load(tmp_path / "plan_00.json")
    lines = [line for line in result.output.splitlines() if line.startswith("at ")]
    assert [int(line.split(":")[0][3:]) for line in lines] == list(plan.provenance.constrained_lengths)
    for n, line in zip(plan.provenance.constrained_lengths, lines, strict=True):
        whole = int((plan.spans(n) >= n).sum())
        assert f"plan 0: {whole} whole" in line
        assert f"at most {budget_room(plan, n, 0.25)} of" in line


def test_no_room_line_without_an_upper_budget():
    plan = _whole_and_least(synthetic_fingerprint(2, 4, 2), 1, 64, 64).model_copy(update={"provenance": Provenance()})
    assert format_room(plan) == ""
