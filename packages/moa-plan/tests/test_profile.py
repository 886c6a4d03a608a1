"""The profile file contract: round trip, validation, and window losses against brute force."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from moa_plan import ModelFingerprint, Profile, ProfileError, load_profile, merge_profiles, save_profile

FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=4, num_key_value_heads=2)


def make(length: int = 40, sink: int = 4, seed: int = 0, **kw: object) -> Profile:
    rng = np.random.default_rng(seed)
    return Profile(
        model=FP,
        length=length,
        sink=sink,
        block=4,
        num_samples=3,
        hist=rng.random((2, 4, length - sink)).astype(np.float32),
        sink_influence=rng.random((2, 4)).astype(np.float32),
        **kw,  # type: ignore[arg-type]
    )


def test_roundtrip(tmp_path: Path) -> None:
    p = make(mean_loss=1.25, notes="x", versions={"moa-profiler": "0.1.0"})
    save_profile(p, tmp_path / "p.safetensors")
    q = load_profile(tmp_path / "p.safetensors", model=FP)
    np.testing.assert_array_equal(q.hist, p.hist)
    np.testing.assert_array_equal(q.sink_influence, p.sink_influence)
    assert (q.length, q.sink, q.block, q.num_samples, q.mean_loss, q.notes) == (40, 4, 4, 3, 1.25, "x")
    assert q.versions == {"moa-profiler": "0.1.0"}


def brute_window_loss(hist_kv: np.ndarray, w: int) -> np.ndarray:
    out = np.zeros(hist_kv.shape[:-1])
    for d in range(hist_kv.shape[-1]):
        if d >= w:
            out += hist_kv[..., d]
    return out


@pytest.mark.parametrize("w", [0, 1, 7, 35, 36, 100])
def test_window_loss_exact(w: int) -> None:
    p = make()
    kv = p.hist.astype(np.float64).reshape(2, 2, 2, -1).sum(2)
    np.testing.assert_allclose(p.window_loss(w), brute_window_loss(kv, w), rtol=1e-12)
    np.testing.assert_allclose(p.window_loss(np.full((2, 4), w), kv=False), brute_window_loss(p.hist, w), rtol=1e-6)


def test_window_loss_many_rules_per_head() -> None:
    p = make()
    windows = np.array([[[0, 5, 50], [1, 2, 3]], [[9, 9, 9], [36, 10, 20]]])
    got = p.window_loss(windows)
    kv = p.kv_hist()
    for index in np.ndindex(windows.shape):
        layer, head, _ = index
        assert got[index] == pytest.approx(brute_window_loss(kv[layer, head], windows[index]))


def test_bucketed_edges_exact_at_edges() -> None:
    exact = make()
    edges = np.array([0, 1, 4, 10, 36], dtype=np.int64)
    sums = np.stack([exact.hist[..., a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)
    bucketed = Profile(
        model=FP, length=40, sink=4, block=4, num_samples=3, hist=sums, sink_influence=exact.sink_influence, edges=edges
    )
    for w in edges:
        np.testing.assert_allclose(bucketed.window_loss(int(w)), exact.window_loss(int(w)), rtol=1e-5)


def _write(path: Path, tensors: dict, meta: dict) -> Path:
    save_file(tensors, str(path), metadata=meta)
    return path


def good_meta() -> dict[str, str]:
    return {
        "format": "moa-profile",
        "format_version": "1",
        "fingerprint": FP.model_dump_json(),
        "length": "40",
        "sink": "4",
        "block": "4",
        "num_samples": "3",
    }


def good_tensors() -> dict[str, np.ndarray]:
    return {"hist": np.ones((2, 4, 36), np.float32), "sink": np.ones((2, 4), np.float32)}


BAD = [
    ("nan", {"hist": np.full((2, 4, 36), np.nan, np.float32)}, {}, "NaN or infinite"),
    ("negative", {"hist": -np.ones((2, 4, 36), np.float32)}, {}, "negative"),
    ("wrong-shape", {"hist": np.ones((3, 4, 36), np.float32)}, {}, "expected [2, 4, *]"),
    ("wrong-buckets", {"hist": np.ones((2, 4, 30), np.float32)}, {}, "needs 36"),
    ("int-dtype", {"hist": np.ones((2, 4, 36), np.int32)}, {}, "float32 or float64"),
    ("sink-shape", {"sink": np.ones((2,), np.float32)}, {}, "tensor sink"),
    ("extra-tensor", {"junk": np.ones(2, np.float32)}, {}, "unknown tensors"),
    ("bad-format", {}, {"format": "other"}, "expected 'moa-profile'"),
    ("future", {}, {"format_version": "9"}, "format_version 9"),
    ("length-text", {}, {"length": "abc"}, "metadata length must be an integer"),
    ("bad-fingerprint", {}, {"fingerprint": "{}"}, "fingerprint is invalid"),
    (
        "edges-not-monotone",
        {"hist": np.ones((2, 4, 2), np.float32), "edges": np.array([0, 5, 3], np.int64)},
        {},
        "strictly increase",
    ),
]


@pytest.mark.parametrize(("tensors", "meta", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_profiles(tmp_path: Path, tensors: dict, meta: dict, expected: str) -> None:
    t = good_tensors() | tensors
    m = good_meta() | meta
    path = _write(tmp_path / "p.safetensors", t, m)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_metadata(tmp_path: Path) -> None:
    meta = good_meta()
    del meta["sink"]
    with pytest.raises(ProfileError, match="lacks sink"):
        load_profile(_write(tmp_path / "p.safetensors", good_tensors(), meta))


def test_truncated_and_garbage(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.safetensors", good_tensors(), good_meta())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ProfileError, match="not a readable safetensors profile"):
        load_profile(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 7)
    with pytest.raises(ProfileError, match="not a readable safetensors profile"):
        load_profile(junk)


def test_fingerprint_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.safetensors", good_tensors(), good_meta())
    other = FP.model_copy(update={"num_layers": 3})
    with pytest.raises(ProfileError, match="num_layers: plan has 2, model has 3"):
        load_profile(path, model=other)


def test_metadata_is_plain_strings(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = save_profile(make(), tmp_path / "p.safetensors")
    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()
    assert json.loads(meta["fingerprint"])["num_layers"] == 2
    assert all(isinstance(v, str) for v in meta.values())


def test_shape_profile_keeps_the_measured_cut_and_takes_the_influence_shape() -> None:
    from moa_plan import shape_profile

    measured, shape = make(seed=1), make(seed=2)
    # One KV head of the shape profile has no influence beyond the block: it must fall linearly.
    shape.hist[1, 2:4, 4:] = 0.0
    out = shape_profile(measured, shape)
    k = measured.hist.shape[-1]
    for layer in range(2):
        for kv in range(2):
            heads = slice(2 * kv, 2 * kv + 2)
            value = float(
                measured.hist[layer, heads, 4:].astype(np.float64).sum()
            )  # measured loss of the cut to window = block
            far = shape.hist[layer, heads].astype(np.float64).sum(axis=0)
            for w in (4, 5, 9, 20, k - 1, k):
                # Brute force: the loss of window w is the measured value x the influence share at d >= w.
                if far[4:].sum() > 0:
                    want = value * far[w:].sum() / far[4:].sum()
                else:
                    want = value * (k - w) / (k - 4)
                got = float(out.window_loss(np.full((2, 2), w))[layer, kv])
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    with pytest.raises(ProfileError, match="different length"):
        shape_profile(measured, make(length=41))


@pytest.mark.parametrize("linear", [0.0, 0.3, 1.0])
def test_shape_profile_spreads_a_linear_share_evenly(linear: float) -> None:
    from moa_plan import shape_profile

    measured, shape = make(seed=3), make(seed=4)
    out = shape_profile(measured, shape, linear=linear)
    k = measured.hist.shape[-1]
    for layer in range(2):
        for kv in range(2):
            heads = slice(2 * kv, 2 * kv + 2)
            value = float(measured.hist[layer, heads, 4:].astype(np.float64).sum())
            far = shape.hist[layer, heads].astype(np.float64).sum(axis=0)
            for w in (4, 7, 16, k - 1, k):
                # Brute force: the blend of the influence share and the even (linear) share of d >= w.
                want = value * ((1 - linear) * far[w:].sum() / far[4:].sum() + linear * (k - w) / (k - 4))
                got = float(out.window_loss(np.full((2, 2), w))[layer, kv])
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    for bad in (-0.1, 1.5):
        with pytest.raises(ProfileError, match="linear share"):
            shape_profile(measured, shape, linear=bad)


def _of_samples(samples: np.ndarray, sinks: np.ndarray, losses: np.ndarray, notes: str) -> Profile:
    """The profile of some samples: every value the mean over them (the file contract)."""
    return Profile(
        model=FP,
        length=40,
        sink=4,
        block=4,
        num_samples=len(samples),
        hist=samples.mean(axis=0),
        sink_influence=sinks.mean(axis=0),
        mean_loss=float(losses.mean()),
        notes=notes,
    )


def test_merge_profiles_is_the_profile_of_all_the_samples() -> None:
    rng = np.random.default_rng(3)
    samples, sinks, losses = rng.random((8, 2, 4, 36)), rng.random((8, 2, 4)), rng.random(8)
    # Oracle: the profile of the eight samples, against the merge of a 3-sample and a 5-sample profile.
    everything = _of_samples(samples, sinks, losses, "all")
    parts = [_of_samples(samples[a:b], sinks[a:b], losses[a:b], f"part {a}") for a, b in ((0, 3), (3, 8))]
    merged = merge_profiles(parts)
    assert merged.num_samples == 8
    np.testing.assert_allclose(merged.hist, everything.hist, rtol=1e-12)
    np.testing.assert_allclose(merged.sink_influence, everything.sink_influence, rtol=1e-12)
    assert merged.mean_loss == pytest.approx(everything.mean_loss, rel=1e-12)
    for w in (0, 5, 20):
        np.testing.assert_allclose(merged.window_loss(w), everything.window_loss(w), rtol=1e-12)
    assert "part 0 (3 samples)" in (merged.notes or "") and "part 3 (5 samples)" in (merged.notes or "")
    assert merge_profiles([parts[0]]) is parts[0]


@pytest.mark.parametrize(("length", "sink", "expected"), [(41, 4, "different length"), (40, 5, "different sink")])
def test_merge_profiles_refuses_another_length_or_sink(length: int, sink: int, expected: str) -> None:
    with pytest.raises(ProfileError, match=expected):
        merge_profiles([make(), make(length=length, sink=sink)])


def test_merge_profiles_refuses_other_models_and_nothing() -> None:
    other = ModelFingerprint(
        architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=4, num_key_value_heads=4
    )
    alien = dataclasses.replace(make(), model=other)  # the same arrays fit: 4 query heads either way
    with pytest.raises(ProfileError, match="different models"):
        merge_profiles([make(), alien])
    with pytest.raises(ProfileError, match="no profiles"):
        merge_profiles([])


def test_mix_profiles_adds_the_other_objective_at_the_given_share_of_the_range() -> None:
    from moa_plan import mix_profiles

    base, other = make(seed=4), make(seed=5)
    other = dataclasses.replace(other, hist=other.hist * 1e-3)  # a prose loss: hundredths where recall has nats
    kv_base = base.hist.astype(np.float64).reshape(2, 2, 2, -1).sum(2)
    kv_other = other.hist.astype(np.float64).reshape(2, 2, 2, -1).sum(2)
    for weight in (0.0, 0.5, 1.0, 3.0):
        mixed = mix_profiles(base, other, weight)
        # Oracle by brute force: scale so that every head cut to the block costs weight x the base's cost.
        scale = weight * brute_window_loss(kv_base, 4).sum() / brute_window_loss(kv_other, 4).sum()
        for w in (0, 4, 9, 30, 36):
            want = brute_window_loss(kv_base, w) + scale * brute_window_loss(kv_other, w)
            np.testing.assert_allclose(mixed.window_loss(w), want, rtol=1e-9)
        cut = mixed.window_loss(4).sum() - base.window_loss(4).sum()
        assert cut == pytest.approx(weight * base.window_loss(4).sum(), rel=1e-9)
    assert "mixed with" in (mix_profiles(base, other).notes or "")


def test_mix_profiles_refuses_mismatches_and_an_empty_objective() -> None:
    from moa_plan import mix_profiles

    with pytest.raises(ProfileError, match="different length"):
        mix_profiles(make(), make(length=41))
    with pytest.raises(ProfileError, match="weight"):
        mix_profiles(make(), make(seed=1), -1.0)
    other = ModelFingerprint(
        architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=4, num_key_value_heads=4
    )
    with pytest.raises(ProfileError, match="cannot mix profiles of different models"):
        mix_profiles(make(), dataclasses.replace(make(seed=1), model=other))
    flat = make(seed=1)
    flat = dataclasses.replace(flat, hist=np.zeros_like(flat.hist))
    with pytest.raises(ProfileError, match="nothing to scale"):
        mix_profiles(make(), flat)
