"""The gate statistic against independent oracles: an explicit float64 mix of two masked softmaxes, finite
differences of it, a hand-written Adam, and a run cut in two by its checkpoint."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from moa_profiler.attention import gating, register_profiling_attention
from moa_profiler.errors import ProfilerError
from moa_profiler.gate import train_gates
from moa_profiler.sample import InfluenceSettings, answer_loss, prepare_model

ORACLE = "moa_test_gate_oracle"
SINK, WINDOW = 4, 8
# [layers, kv_heads] float64 gates read by the oracle attention.
GATES: dict[str, torch.Tensor] = {}


def oracle_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, scaling: float, **_: Any
) -> tuple[torch.Tensor, None]:
    """Per query head: g x softmax over the causal keys + (1 - g) x softmax over the sink + window keys, explicitly."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    length = query.shape[2]
    scores = query @ k.transpose(-1, -2) * scaling
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    full = torch.softmax(scores.masked_fill(j > i, float("-inf")), dim=-1) @ v
    keep = (j <= i) & ((j < SINK) | (i - j < WINDOW))
    cut = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v
    g = GATES["g"][module.layer_idx].repeat_interleave(group)[None, :, None, None]
    return (g * full + (1 - g) * cut).transpose(1, 2).contiguous(), None


@pytest.fixture
def setup(model_factory, words, tokenizer):
    """A float64 tiny GQA model (2 layers x 4 KV heads, peaked attention) and two 96-token samples."""
    from transformers import AttentionInterface

    AttentionInterface.register(ORACLE, oracle_attention)
    register_profiling_attention()
    model = model_factory(layers=2, heads=8, kv_heads=4, hidden=64, seed=3, std=0.25).double()
    prepare_model(model)
    ids = torch.tensor(tokenizer(words(96, 7), add_special_tokens=False).input_ids)
    yield model, [(ids, 80, 96), (ids.roll(5), 80, 96)]
    GATES.clear()


def oracle_loss(model, sample, gates: torch.Tensor) -> float:
    GATES["g"] = gates.double()
    model.set_attn_implementation(ORACLE)
    ids, start, stop = sample
    try:
        with torch.no_grad():  # float64 throughout (answer_loss takes its cross-entropy in float32)
            logits = model(input_ids=ids[None], use_cache=False).logits[0, start - 1 : stop - 1]
            return float(torch.nn.functional.cross_entropy(logits.double(), ids[start:stop]))
    finally:
        model.set_attn_implementation("moa_profile")


def gated_loss(model, sample, gates: torch.Tensor) -> torch.Tensor:
    with gating(gates, WINDOW, SINK):
        return answer_loss(model, *sample)


def test_gated_attention_equals_an_explicit_mix(setup):
    model, samples = setup
    g = torch.rand(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sample in samples:
        assert float(gated_loss(model, sample, g)) == pytest.approx(oracle_loss(model, sample, g), rel=1e-6)
    plain = float(answer_loss(model, *samples[0]))
    # Every gate open is the dense model; every gate shut differs from it (the cut is real at 96 tokens).
    assert float(gated_loss(model, samples[0], torch.ones(2, 4, dtype=torch.float64))) == pytest.approx(plain, rel=1e-7)
    shut = float(gated_loss(model, samples[0], torch.zeros(2, 4, dtype=torch.float64)))
    assert abs(shut - plain) > 1e-4


def test_gate_gradient_matches_finite_differences(setup):
    model, samples = setup
    g = torch.rand(2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    with torch.enable_grad():
        gated_loss(model, samples[0], g).backward()
    assert g.grad is not None
    eps = 1e-3  # the model normalises in float32 (RMSNorm): smaller steps see that rounding
    for layer in range(2):
        for kv in range(4):
            up, down = g.detach().clone(), g.detach().clone()
            up[layer, kv] += eps
            down[layer, kv] -= eps
            numeric = (oracle_loss(model, samples[0], up) - oracle_loss(model, samples[0], down)) / (2 * eps)
            assert float(g.grad[layer, kv]) == pytest.approx(numeric, rel=2e-3, abs=1e-4)
    assert float(g.grad.abs().max()) > 1e-4


def _adam_oracle(model, samples, order, settings: InfluenceSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate training written out by hand: gradients of the explicit oracle (autograd through its two softmaxes;
    `test_gate_gradient_matches_finite_differences` checks the profiler's against finite differences), Adam, clamp."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    g = torch.ones(2, 4, dtype=torch.float64)
    m = torch.zeros_like(g)
    v = torch.zeros_like(g)
    area = torch.zeros_like(g)
    previous = 0.0
    for step, index in enumerate(order):
        GATES["g"] = g.clone().requires_grad_(True)
        model.set_attn_implementation(ORACLE)
        ids, start, stop = samples[index]
        with torch.enable_grad():
            logits = model(input_ids=ids[None], use_cache=False).logits[0, start - 1 : stop - 1]
            torch.nn.functional.cross_entropy(logits.double(), ids[start:stop]).backward()
        model.set_attn_implementation("moa_profile")
        grad = GATES["g"].grad.clone()
        # The penalty: geometric from penalty / 256 at the first step to penalty at the last.
        weight = settings.gate_penalty * 256.0 ** ((step + 1) / settings.gate_steps - 1)
        grad += weight
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        t = step + 1
        g = g - settings.gate_lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        g = g.clamp(0.0, 1.0)
        area += g * (weight - previous)
        previous = weight
    return g, area


def test_training_equals_a_hand_written_adam_and_resumes_exactly(setup, tmp_path):
    """Gates and values after training equal finite-difference Adam on the explicit oracle; a run stopped at its
    checkpoint and resumed ends where the uninterrupted run ends."""
    from moa_profiler.gate import _order

    model, samples = setup
    settings = InfluenceSettings(
        sink=SINK, block=WINDOW, statistic="gate", gate_steps=6, gate_lr=0.1, gate_penalty=0.05, gate_seed=4
    )
    order = _order(len(samples), settings.gate_steps, settings.gate_seed)
    assert sorted(order[:2]) == [0, 1] and sorted(order[2:4]) == [0, 1]  # every sample once per pass
    run = train_gates(model, samples, settings)
    gates, values = _adam_oracle(model, samples, order, settings)
    # float32 gates (what the profiler trains) against float64 oracle arithmetic.
    assert torch.allclose(run.gates.double(), gates, atol=1e-5)
    for (layer, kv), value in run.values.items():
        assert value == pytest.approx(float(values[layer, kv]), abs=1e-6)
        assert 0.0 <= value <= settings.gate_penalty
    assert len(run.losses) == 6 and run.losses[0] == pytest.approx(float(answer_loss(model, *samples[order[0]])))
    assert (run.gates < 1).any()

    # Stop after 4 of 6 steps (the checkpoint is written every 2), then resume from it.
    ckpt = tmp_path / "gate.json"

    class Stop(Exception):
        pass

    def stop_at_four(line: str) -> None:
        if line.startswith("gate step 4/"):
            raise Stop

    with pytest.raises(Stop):
        train_gates(model, samples, settings, checkpoint=ckpt, key="k", progress=stop_at_four, every=2)
    assert len(json.loads(ckpt.read_text())["losses"]) == 4
    resumed = train_gates(model, samples, settings, checkpoint=ckpt, key="k", every=2)
    assert torch.equal(resumed.gates, run.gates)
    assert resumed.values == run.values and resumed.losses == run.losses
    # A checkpoint of another run is ignored: the run starts over and gives the same result.
    again = train_gates(model, samples, settings, checkpoint=ckpt, key="other", every=2)
    assert torch.equal(again.gates, run.gates)


def test_a_large_penalty_shuts_every_gate(setup):
    model, samples = setup
    shut = train_gates(
        model,
        samples,
        InfluenceSettings(sink=SINK, block=WINDOW, statistic="gate", gate_steps=30, gate_lr=0.2, gate_penalty=100.0),
    )
    assert float(shut.gates.max()) == 0.0


def test_gate_settings_and_errors(setup):
    model, samples = setup
    with pytest.raises(ProfilerError, match="gate_steps must be positive"):
        InfluenceSettings(statistic="gate", gate_steps=0)
    with pytest.raises(ProfilerError, match="gate_lr > 0"):
        InfluenceSettings(statistic="gate", gate_lr=0.0)
    with pytest.raises(ProfilerError, match="no block map"):
        InfluenceSettings(statistic="gate", block_map=True)
    with pytest.raises(ProfilerError, match="at least one calibration sample"):
        train_gates(model, [], InfluenceSettings(statistic="gate"))
    with pytest.raises(ProfilerError, match="gates must be"), gating(torch.ones(8), WINDOW, SINK):
        pass
    with pytest.raises(ProfilerError, match="do not fit layer"), gating(torch.ones(2, 3), WINDOW, SINK):
        answer_loss(model, *samples[0])
    from moa_profiler.attention import masking

    with (
        pytest.raises(ProfilerError, match="cannot be combined"),
        gating(torch.ones(2, 4), WINDOW, SINK),
        masking(0, 0, WINDOW, SINK),
    ):
        answer_loss(model, *samples[0])
    assert math.isfinite(float(answer_loss(model, *samples[0])))
