"""Property-based fuzzing of the plan and profile loaders: a valid object or one clear error.

The default run tries a few hundred cases; ``make test-slow`` runs 10,000+ per loader.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moa_plan import ModelFingerprint, Plan, PlanError, Profile, ProfileError, load_profile, save_profile

FP = ModelFingerprint(num_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
GOOD_PLAN = json.loads(Plan.uniform(FP, 0.5).to_json())

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


PLAN_PATHS = _paths(GOOD_PLAN)[1:]


@st.composite
def mutated_plans(draw: st.DrawFn) -> Any:
    data = json.loads(json.dumps(GOOD_PLAN))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PLAN_PATHS))
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            action = draw(st.sampled_from(["replace", "delete"]))
            if action == "delete" and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = draw(json_value)
        except (KeyError, IndexError, TypeError):
            continue
    return data


def _check_plan_text(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            plan = Plan.load(path)
        except PlanError as exc:
            message = str(exc)
            assert "\n" not in message
            assert message.startswith(str(path))
            return
        # Whatever loads is a usable plan.
        assert plan.spans(1024).shape == (plan.model.num_layers, plan.model.num_key_value_heads)


def _plan_settings(n: int):  # type: ignore[no-untyped-def]
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))


@_plan_settings(300)
@given(data=mutated_plans())
def test_plan_loader_mutations(data: Any) -> None:
    _check_plan_text(json.dumps(data, allow_nan=True))


@_plan_settings(200)
@given(raw=st.binary(max_size=200))
def test_plan_loader_bytes(raw: bytes) -> None:
    _check_plan_text(raw)


def _profile_bytes() -> bytes:
    rng = np.random.default_rng(0)
    p = Profile(
        model=FP,
        length=12,
        sink=4,
        block=4,
        num_samples=1,
        hist=rng.random((2, 4, 8)).astype(np.float32),
        sink_influence=rng.random((2, 4)).astype(np.float32),
    )
    with tempfile.TemporaryDirectory() as tmp:
        return save_profile(p, Path(tmp) / "p.safetensors").read_bytes()


GOOD_PROFILE = _profile_bytes()
HEADER_LEN = struct.unpack("<Q", GOOD_PROFILE[:8])[0]


@st.composite
def mutated_profiles(draw: st.DrawFn) -> bytes:
    raw = bytearray(GOOD_PROFILE)
    kind = draw(st.sampled_from(["flip", "truncate", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    else:
        header = json.loads(raw[8 : 8 + HEADER_LEN])
        key = draw(st.sampled_from(sorted(header)))
        if key == "__metadata__":
            meta_key = draw(st.sampled_from(sorted(header[key])))
            header[key][meta_key] = draw(st.text(max_size=10))
        else:
            header[key][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_value)
        blob = json.dumps(header).encode()
        raw = bytearray(struct.pack("<Q", len(blob)) + blob + raw[8 + HEADER_LEN :])
    return bytes(raw)


def _check_profile(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.safetensors"
        path.write_bytes(raw)
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            assert "\n" not in str(exc)
            return
        assert np.isfinite(profile.hist).all()
        assert profile.window_loss(3).shape == (2, 2)


@_plan_settings(300)
@given(raw=mutated_profiles())
def test_profile_loader_mutations(raw: bytes) -> None:
    _check_profile(raw)


@pytest.mark.slow
@_plan_settings(10_000)
@given(data=mutated_plans())
def test_plan_loader_mutations_10k(data: Any) -> None:
    _check_plan_text(json.dumps(data, allow_nan=True))


@pytest.mark.slow
@_plan_settings(10_000)
@given(raw=mutated_profiles())
def test_profile_loader_mutations_10k(raw: bytes) -> None:
    _check_profile(raw)
