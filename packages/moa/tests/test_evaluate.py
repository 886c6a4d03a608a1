"""Plan specs of ``moa eval``: the one-head probes keep exactly one KV head whole."""

from __future__ import annotations

import pytest

from moa.evaluate import parse_plan_specs
from moa_plan import MoaError, ModelFingerprint

FP = ModelFingerprint(
    architecture="LlamaForCausalLM",
    num_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=8192,
)


@pytest.mark.parametrize("n", [256, 1000, 4096])
def test_head_probe_spans(n: int) -> None:
    (probe,) = parse_plan_specs(["head:2.1"], FP)
    assert probe.name == "head-2.1" and probe.plan is not None
    spans = probe.plan.spans(n)
    # Written out by hand: the probed head sees all n tokens, every other head sink (64) + one block (64).
    expected = [[128, 128], [128, 128], [128, n]]
    assert spans.tolist() == [[min(s, n) for s in row] for row in expected]


def test_heads_expands_to_one_probe_per_kv_head_with_the_first_plans_sink() -> None:
    specs = parse_plan_specs(["dense", "heads", "uniform:0.5"], FP)
    names = [s.name for s in specs]
    assert names == ["dense", "head-0.0", "head-0.1", "head-1.0", "head-1.1", "head-2.0", "head-2.1", "uniform-0.5"]
    for spec in specs[1:-1]:
        assert spec.plan is not None
        whole = spec.plan.spans(2048) == 2048
        assert whole.sum() == 1
        layer, head = map(int, spec.name.removeprefix("head-").split("."))
        assert whole[layer, head]


@pytest.mark.parametrize("n", [100, 1000, 1088, 4096])
def test_window_spec_keeps_a_fixed_number_of_tokens(n: int) -> None:
    """``window:T`` is StreamingLLM's fixed cache: every head keeps T tokens (sink included, rounded up to the
    64-token block) whatever the length, or all n when n is shorter; its density falls as 1/n."""
    (spec,) = parse_plan_specs(["window:1000"], FP)
    assert spec.name == "window-1000" and spec.plan is not None
    # 1000 rounded up to whole 64-token blocks is 1024 (16 blocks), by hand.
    assert spec.plan.spans(n).tolist() == [[min(n, 1024)] * 2] * 3
    assert spec.plan.density(n) == pytest.approx(min(n, 1024) / n)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("head:3.0", "not a KV head"),
        ("head:0.2", "not a KV head"),
        ("head:x", "head:LAYER.KV_HEAD"),
        ("head:1", "head:"),
        ("window:0", "window:TOKENS"),
        ("window:1.5", "window:TOKENS"),
        ("window:", "window:TOKENS"),
    ],
)
def test_bad_head_specs(spec: str, message: str) -> None:
    with pytest.raises(MoaError, match=message):
        parse_plan_specs([spec], FP)


def test_answer_loss_matches_transformers_labels_on_a_padded_batch() -> None:
    """Two samples of different lengths in one left-padded batch: the mean answer-token loss equals the loss
    transformers computes from labels (everything but the answers ignored), each sample alone and unpadded."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from moa.evaluate import answer_loss, load_model

    reference = Path(__file__).resolve().parents[3] / "models" / "moa-reference"
    if not (reference / "config.json").is_file():
        pytest.skip("no reference model")
    model, _ = load_model(reference)
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    samples = [
        SimpleNamespace(
            input_ids=torch.randint(0, vocab, (90,), generator=gen).tolist(), answer_start=70, answer_end=80
        ),
        SimpleNamespace(
            input_ids=torch.randint(0, vocab, (64,), generator=gen).tolist(), answer_start=20, answer_end=64
        ),
    ]
    total, count = 0.0, 0
    for s in samples:
        ids = torch.tensor([s.input_ids])
        labels = torch.full_like(ids, -100)
        labels[0, s.answer_start : s.answer_end] = ids[0, s.answer_start : s.answer_end]
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=labels).loss)
        total, count = total + loss * (s.answer_end - s.answer_start), count + s.answer_end - s.answer_start
    assert answer_loss(model, samples, batch_size=2) == pytest.approx(total / count, rel=1e-4)
    assert answer_loss(model, samples, batch_size=1) == pytest.approx(total / count, rel=1e-4)
