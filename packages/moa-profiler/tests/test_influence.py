"""Influence math against independent oracles: autograd on an explicit A, and real masked losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from moa_profiler.attention import Recorder, recording, register_profiling_attention
from moa_profiler.influence import influence_rows, layer_influence
from moa_profiler.sample import InfluenceSettings, answer_loss, prepare_model, profile_sample

EXPLICIT = "moa_test_explicit"
# layer -> [HQ, T, T] bool, True where an entry is masked out (in addition to causality).
DROP: dict[int, torch.Tensor] = {}
# layer -> explicit A with retain_grad, for the autograd oracle.
SEEN: dict[int, torch.Tensor] = {}


def explicit_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, scaling: float, **_: Any
) -> tuple[torch.Tensor, None]:
    """Dense attention with an explicit A: causal, plus the entries in DROP masked and renormalised."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    length = query.shape[2]
    scores = query @ k.transpose(-1, -2) * scaling
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1)
    if module.layer_idx in DROP:
        hidden = hidden | DROP[module.layer_idx]
    a = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
    if a.requires_grad:
        a.retain_grad()
    SEEN[module.layer_idx] = a
    return (a @ v).transpose(1, 2).contiguous(), None


@pytest.fixture
def build(model_factory, words, tokenizer):
    """Build a float64 tiny GQA model (init std given) and one 96-token sample with answer span [80, 96)."""
    from transformers import AttentionInterface

    AttentionInterface.register(EXPLICIT, explicit_attention)
    register_profiling_attention()

    def make(std: float):
        model = model_factory(layers=2, heads=8, kv_heads=4, hidden=64, seed=3, std=std).double()
        prepare_model(model)
        ids = torch.tensor(tokenizer(words(96, 7), add_special_tokens=False).input_ids)
        return model, ids, 80, 96

    DROP.clear()
    SEEN.clear()
    yield make
    DROP.clear()
    SEEN.clear()


@pytest.fixture
def setup(build):
    """The model with peaked attention (init std 0.25)."""
    return build(0.25)


def oracle_loss(model, ids, start, stop, drop=None) -> float:
    DROP.clear()
    DROP.update(drop or {})
    model.set_attn_implementation(EXPLICIT)
    with torch.no_grad():
        value = float(answer_loss(model, ids, start, stop))
    DROP.clear()
    return value


def oracle_influence(model, ids, start, stop) -> dict[int, torch.Tensor]:
    """Signed E per layer [HQ, T, T] from autograd: G = dL/dA on an explicit A."""
    model.set_attn_implementation(EXPLICIT)
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, _i, o: o.requires_grad_(True))
    with torch.enable_grad():
        answer_loss(model, ids, start, stop).backward()
    handle.remove()
    out = {}
    for layer, a in SEEN.items():
        a = a.detach()[0]
        g = SEEN[layer].grad[0]
        r = (g * a).sum(-1, keepdim=True)
        e = a * (r - g) / (1 - a).clamp_min(1e-300)
        out[layer] = torch.where(a >= 1, 0.0, e)
    return out


def profiling_records(model, ids, start, stop) -> Recorder:
    model.set_attn_implementation("moa_profile")
    recorder = Recorder()
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, _i, o: o.requires_grad_(True))
    with torch.enable_grad(), recording(recorder):
        answer_loss(model, ids, start, stop).backward()
    handle.remove()
    return recorder


def test_identities_match_autograd(setup):
    """G = dO v^T and r = dO . o reproduce autograd's dL/dA on an explicit softmax."""
    model, ids, start, stop = setup
    expected = oracle_influence(model, ids, start, stop)
    recorder = profiling_records(model, ids, start, stop)
    assert not any(p.grad is not None for p in model.parameters()), "weight gradients were computed"
    for layer, record in recorder.layers.items():
        g = SEEN[layer].grad[0]
        group = record.q.shape[0] // record.k.shape[0]
        g_identity = record.do @ record.v.repeat_interleave(group, 0).transpose(-1, -2)
        torch.testing.assert_close(g_identity, g, rtol=1e-9, atol=1e-12)
        r_identity = (record.do * record.o).sum(-1)
        torch.testing.assert_close(r_identity, (g * SEEN[layer].detach()[0]).sum(-1), rtol=1e-9, atol=1e-12)
        length = ids.shape[0]
        for chunk in (7, 32, length):
            parts = [
                influence_rows(
                    record.q,
                    record.k,
                    record.v,
                    record.do,
                    s,
                    min(length, s + chunk),
                    record.scale,
                    dtype=torch.float64,
                )
                for s in range(0, length, chunk)
            ]
            torch.testing.assert_close(torch.cat(parts, 1), expected[layer], rtol=1e-7, atol=1e-12)


def test_single_entries_match_masked_loss(setup):
    """Masking one entry and renormalising changes the real loss by about E (within 10% when A is small)."""
    model, ids, start, stop = setup
    influence = oracle_influence(model, ids, start, stop)
    recorder = profiling_records(model, ids, start, stop)
    base = oracle_loss(model, ids, start, stop)
    rng = np.random.default_rng(0)
    predicted, real, small_a = [], [], []
    for layer, record in recorder.layers.items():
        heads, length = record.q.shape[:2]
        for head in range(heads):
            e = influence_rows(record.q, record.k, record.v, record.do, 0, length, record.scale, dtype=torch.float64)[
                head
            ]
            a = SEEN[layer].detach()[0, head]
            # The most influential small entries of this head (A < 0.05), where first order is accurate,
            # and one random entry.
            flat = torch.where((a < 0.05) & (e != 0), e.abs(), 0.0).flatten()
            for index in [*flat.topk(3).indices.tolist(), int(rng.integers(length * length))]:
                i, j = divmod(index, length)
                if j >= i or e[i, j] == 0:
                    continue
                torch.testing.assert_close(e[i, j], influence[layer][head, i, j])
                drop = torch.zeros(heads, length, length, dtype=torch.bool)
                drop[head, i, j] = True
                predicted.append(float(e[i, j]))
                small_a.append(float(a[i, j]))
                real.append(oracle_loss(model, ids, start, stop, {layer: drop}) - base)
    predicted_a, real_a = np.array(predicted), np.array(real)
    # Small entries: low attention and a small predicted change, where the second-order remainder is negligible.
    small = (np.array(small_a) < 0.05) & (np.abs(predicted_a) < 3e-3) & (np.abs(predicted_a) > 1e-6)
    assert small.sum() >= 10
    rel = np.abs(predicted_a[small] - real_a[small]) / np.abs(real_a[small])
    assert rel.max() < 0.1, rel
    assert spearmanr(predicted_a, real_a).statistic >= 0.9


@pytest.mark.parametrize(("near", "far"), [(48, 10**9), (60, 70), (20, 21)], ids=["tail48", "band60-70", "diag20"])
def test_bands_match_masked_loss(build, near, far):
    """The summed E of a band ranks the 16 heads like the real loss change of masking the band."""
    model, ids, start, stop = build(0.1)
    base = oracle_loss(model, ids, start, stop)
    recorder = profiling_records(model, ids, start, stop)
    sink = 4
    predicted, real = [], []
    for layer, record in recorder.layers.items():
        heads, length = record.q.shape[:2]
        e = influence_rows(record.q, record.k, record.v, record.do, 0, length, record.scale, dtype=torch.float64)
        i = torch.arange(length)[:, None]
        j = torch.arange(length)[None, :]
        band = (j >= sink) & (i - j >= near) & (i - j < far)
        for head in range(heads):
            drop = torch.zeros(heads, length, length, dtype=torch.bool)
            drop[head] = band
            predicted.append(float(e[head][band].sum()))
            real.append(oracle_loss(model, ids, start, stop, {layer: drop}) - base)
    rho = spearmanr(predicted, real).statistic
    assert rho >= 0.9, (rho, predicted, real)


def test_window_loss_equals_explicit_masked_sum(setup):
    """hist reproduces, for any window, the sum of |E| over the entries a sink+window mask drops."""
    model, ids, start, stop = setup
    influence = oracle_influence(model, ids, start, stop)
    sink = 5
    prepare_model(model)
    result = profile_sample(
        model,
        ids,
        start,
        stop,
        InfluenceSettings(sink=sink, block=16, block_map=True, dtype=torch.float64, max_elements=3000),
    )
    length = ids.shape[0]
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    for window in (1, 2, 17, 50, length - sink - 1, length - sink):
        dropped = (j <= i) & (j >= sink) & (i - j >= window)
        for layer, e in influence.items():
            expected = (e.abs() * dropped).sum(dim=(1, 2))
            got = result.hist[layer, :, window:].sum(-1)
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    for layer, e in influence.items():
        torch.testing.assert_close(result.sink[layer], e.abs()[:, :, :sink].sum(dim=(1, 2)), rtol=1e-6, atol=0)
        blocks = e.abs().view(-1, length // 16, 16, length // 16, 16).sum(dim=(2, 4))
        torch.testing.assert_close(result.block_map[layer], blocks, rtol=1e-6, atol=1e-15)


def test_chunk_memory_is_linear():
    """layer_influence never builds a [HQ, T, T] tensor: chunks hold at most max_elements."""
    torch.manual_seed(0)
    heads, length = 4, 256
    q, do = torch.randn(heads, length, 8), torch.randn(heads, length, 8)
    k, v = torch.randn(2, length, 8), torch.randn(2, length, 8)
    whole = layer_influence(q, k, v, do, 0.3, sink=3, max_elements=heads * length * length)
    chunked = layer_influence(q, k, v, do, 0.3, sink=3, max_elements=heads * length * 5)
    torch.testing.assert_close(chunked.hist, whole.hist, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(chunked.sink, whole.sink, rtol=1e-5, atol=1e-9)


def test_answer_loss_matches_transformers_labels(model_factory, words, tokenizer):
    """The loss is the mean cross-entropy of the answer tokens only, as transformers computes it with labels."""
    model = model_factory(seed=2, std=0.2)
    ids = torch.tensor(tokenizer(words(50, 3), add_special_tokens=False).input_ids)
    labels = torch.full_like(ids, -100)
    labels[31:44] = ids[31:44]
    expected = model(input_ids=ids[None], labels=labels[None]).loss
    torch.testing.assert_close(answer_loss(model, ids, 31, 44), expected)


def test_sliding_window_models_are_refused(model_factory):
    from moa_profiler.errors import ProfilerError

    model = model_factory()
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ProfilerError, match="plain causal attention only"):
        prepare_model(model)


def test_ablation_equals_explicit_masked_losses(setup):
    """The ablation statistic is the measured loss of cutting one KV head to sink + window."""
    from moa_profiler.sample import ablate_sample, ablation_windows, monotone_ablation

    model, ids, start, stop = setup
    settings = InfluenceSettings(sink=4, block=8, statistic="ablation", ablation_points=5)
    length = len(ids)
    windows = ablation_windows(length, settings)
    # 92 keys beyond the sink -> 11 whole blocks of 8 below them; at most 5 windows: every 3rd block.
    assert windows == [8, 32, 56, 80]
    model.set_attn_implementation("moa_profile")
    result = ablate_sample(model, ids, start, stop, settings)
    base = oracle_loss(model, ids, start, stop)
    assert result.loss == pytest.approx(base, abs=1e-10)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    measured = torch.zeros(2, 4, len(windows), dtype=torch.float64)
    for layer in range(2):
        for kv in range(4):
            for k, window in enumerate(windows):
                drop = torch.zeros(8, length, length, dtype=torch.bool)
                drop[2 * kv : 2 * kv + 2] = ~((j < 4) | (i - j < window))
                measured[layer, kv, k] = oracle_loss(model, ids, start, stop, {layer: drop}) - base
                # Tail sums over the KV head's query heads give back the signed measurement.
                kept = result.hist[layer, 2 * kv : 2 * kv + 2, window:].sum()
                assert float(kept) == pytest.approx(float(measured[layer, kv, k]), abs=1e-9)
    assert (measured.abs() > 1e-6).any()
    # The saved statistic: the monotone envelope max(0, max over wider windows), never negative.
    saved = monotone_ablation(result.hist, length, settings)
    assert (saved >= 0).all()
    for layer in range(2):
        for kv in range(4):
            for k, window in enumerate(windows):
                envelope = max(0.0, float(measured[layer, kv, k:].max()))
                assert float(saved[layer, 2 * kv : 2 * kv + 2, window:].sum()) == pytest.approx(envelope, abs=1e-9)


def test_ablation_settings_and_mask_errors(setup):
    from moa_profiler.attention import masking
    from moa_profiler.errors import ProfilerError

    with pytest.raises(ProfilerError, match="unknown statistic"):
        InfluenceSettings(statistic="gradient")
    with pytest.raises(ProfilerError, match="no block map"):
        InfluenceSettings(statistic="ablation", block_map=True)
    model, ids, start, stop = setup
    model.set_attn_implementation("moa_profile")
    with pytest.raises(ProfilerError, match="no KV head 9"), masking(0, 9, 8, 4):
        answer_loss(model, ids, start, stop)
    with pytest.raises(ProfilerError, match="window must be >= 1"), masking(0, 0, 0, 4):
        pass
    from moa_profiler.attention import profiling_attention

    q = torch.zeros(1, 4, 5, 8)
    with pytest.raises(ProfilerError, match="no layer_idx"), masking(0, 0, 2, 1):
        profiling_attention(torch.nn.Identity(), q, q[:, :2], q[:, :2], None)


def _cut_loss_oracle(model, samples, length: int):
    """Mean loss over ``samples`` with the listed KV heads cut to sink 4 + window 8 by explicit masks (2 layers, 4 KV heads)."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    outside = ~((j < 4) | (i - j < 8))

    def loss_with(cut: list[tuple[int, int]]) -> float:
        drop = {layer: torch.zeros(8, length, length, dtype=torch.bool) for layer in range(2)}
        for layer, kv in cut:
            drop[layer][2 * kv : 2 * kv + 2] = outside
        return float(np.mean([oracle_loss(model, x, a, b, drop) for x, a, b in samples]))

    return loss_with


def test_greedy_path_equals_a_brute_force_greedy_on_explicit_masks(setup, tmp_path):
    """Each round: the mean loss of one more cut on top of the cuts so far, cheapest `group` cut first."""
    from moa_profiler.greedy import ablation_histogram, greedy_path

    model, ids, start, stop = setup
    settings = InfluenceSettings(sink=4, block=8, statistic="greedy", greedy_group=2, greedy_stop=0.75)
    samples = [(ids, start, stop), (ids.roll(5), start, stop)]
    model.set_attn_implementation("moa_profile")
    path = greedy_path(model, samples, settings, checkpoint=tmp_path / "g.json", key="k")
    length = len(ids)
    loss_with = _cut_loss_oracle(model, samples, length)

    cut: list[tuple[int, int]] = []
    values: dict[tuple[int, int], float] = {}
    heads = [(layer, kv) for layer in range(2) for kv in range(4)]
    while len(cut) < 6:
        base = loss_with(cut)
        remaining = [h for h in heads if h not in cut]
        trial = {h: loss_with([*cut, h]) - base for h in remaining}
        values.update(trial)
        cut += sorted(remaining, key=lambda h: (trial[h], h))[:2]
    assert path.order == cut
    for h in heads:
        assert path.values[h] == pytest.approx(values[h], abs=1e-9)
    assert len(path.losses) == 3 and path.losses[0] == pytest.approx(loss_with([]), abs=1e-9)
    # A resumed search (checkpoint of the finished rounds) does no work and gives the same path.
    again = greedy_path(model, samples, settings, checkpoint=tmp_path / "g.json", key="k")
    assert again.order == path.order and again.values == path.values
    # As a profile: tail sums at distances <= block give each head's (clipped) marginal, split over its query heads.
    hist = ablation_histogram(path.values, 2, 8, 4, length, settings)
    for (layer, kv), value in values.items():
        assert float(hist[layer, 2 * kv : 2 * kv + 2, 8:].sum()) == pytest.approx(max(value, 0.0), abs=1e-9)


def test_lazy_greedy_measures_fewer_heads_by_the_lazy_rule(setup, monkeypatch):
    """Lazy rounds: every head measured gets its brute-force marginal on top of that round's cuts; heads are measured
    cheapest-last-marginal first, a group at a time, until the cheapest `group` cost no more than the last marginal of
    any head left unmeasured; the round cuts the cheapest measured. Fewer forwards than the exact search."""
    import moa_profiler.greedy as greedy
    from moa_profiler.greedy import greedy_path

    model, ids, start, stop = setup
    samples = [(ids, start, stop), (ids.roll(5), start, stop)]
    model.set_attn_implementation("moa_profile")
    calls = []
    counted = greedy.answer_loss
    monkeypatch.setattr(greedy, "answer_loss", lambda *a: calls.append(1) or counted(*a))
    lazy = InfluenceSettings(sink=4, block=8, statistic="greedy", greedy_group=1, greedy_stop=0.75, greedy_lazy=True)
    path = greedy_path(model, samples, lazy)
    lazy_calls = len(calls)
    calls.clear()
    exact = greedy_path(
        model, samples, InfluenceSettings(sink=4, block=8, statistic="greedy", greedy_group=1, greedy_stop=0.75)
    )
    assert len(calls) > lazy_calls

    length = len(ids)
    loss_with = _cut_loss_oracle(model, samples, length)

    heads = [(layer, kv) for layer in range(2) for kv in range(4)]
    cut: list[tuple[int, int]] = []
    values: dict[tuple[int, int], float] = {}
    forwards = 0
    while len(cut) < 6:
        base = loss_with(cut)
        remaining = [h for h in heads if h not in cut]
        queue = sorted(remaining, key=lambda h: (values[h], h)) if values else remaining
        fresh: dict[tuple[int, int], float] = {}
        for n, h in enumerate(queue):
            fresh[h] = loss_with([*cut, h]) - base
            if values and (n + 1 == len(queue) or min(fresh.values()) <= values[queue[n + 1]]):
                break
        forwards += len(samples) * (1 + len(fresh))
        values.update(fresh)
        cut.append(min(fresh, key=lambda h: (fresh[h], h)))
    assert path.order == cut and lazy_calls == forwards
    for h in heads:
        assert path.values[h] == pytest.approx(values[h], abs=1e-9)
    assert exact.order[0] == path.order[0]
