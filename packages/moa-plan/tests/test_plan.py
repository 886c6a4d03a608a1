"""Plan construction, persistence, schema, golden files and the original MoA format."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from moa_plan import (
    Budget,
    ModelFingerprint,
    Plan,
    PlanError,
    check_budget,
    export_moa_json,
    import_moa_json,
)
from moa_plan.schema import SCHEMA_PATH, plan_schema_json

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
FIXTURES = HERE / "fixtures" / "moa-original-plans"

GQA = ModelFingerprint(
    architecture="LlamaForCausalLM",
    num_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)


def test_schema_file_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == plan_schema_json(), (
        "plan.schema.json is stale: regenerate with `moa plan schema -o "
        "packages/moa-plan/src/moa_plan/plan.schema.json` and review the diff"
    )


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.name)
def test_golden_plans_keep_loading(path: Path) -> None:
    plan = Plan.load(path)
    assert plan.format_version <= 1
    assert plan.spans(4096).shape == (plan.model.num_layers, plan.model.num_key_value_heads)


def test_roundtrip(tmp_path: Path) -> None:
    plan = Plan.from_arrays(GQA, [[0, 128], [256, -64]], [[0.25, 0.5], [0.125, 1.0]], sink=32, block=32)
    out = plan.save(tmp_path / "p.json")
    again = Plan.load(out)
    assert again == plan
    assert again.spans(1000).tolist() == [[256, 640], [384, 960]]
    assert list(tmp_path.iterdir()) == [out]


def test_plan_is_frozen() -> None:
    plan = Plan.dense(GQA)
    with pytest.raises(Exception, match="frozen"):
        plan.sink = 3  # type: ignore[misc]


def test_check_compatible_names_field() -> None:
    plan = Plan.dense(GQA)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "hidden_size": 128,
        "max_position_embeddings": 4096,
    }
    with pytest.raises(PlanError, match="num_key_value_heads: plan has 2, model has 4"):
        plan.check_compatible(config)
    config["num_key_value_heads"] = 2
    plan.check_compatible(config)


def test_fingerprint_from_config_object() -> None:
    class Cfg:
        architectures = ["MistralForCausalLM"]
        num_hidden_layers = 3
        num_attention_heads = 4
        num_key_value_heads = None
        hidden_size = 64
        head_dim = None
        max_position_embeddings = 128

    fp = ModelFingerprint.from_config(Cfg())
    assert (fp.num_key_value_heads, fp.head_dim, fp.architecture) == (4, 16, "MistralForCausalLM")


def test_kv_bytes() -> None:
    plan = Plan.uniform(GQA, 0.25)
    assert plan.kv_bytes(4096, batch=3, dtype_bytes=2) == int(plan.spans(4096).sum()) * 2 * 16 * 2 * 3


def test_budget_checker_flags_each_violation() -> None:
    alphas = np.zeros((2, 2))
    betas = np.array([[0.25, 0.25], [0.5, 1.0]])
    plan = Plan.from_arrays(GQA, alphas, betas)
    assert check_budget(plan, Budget(lengths=[4096], upper=0.5, lower=0.5)) == []
    problems = check_budget(plan, Budget(lengths=[4096, 8192], upper=0.4, lower=0.0, max_rules_per_layer=1))
    assert len(problems) == 3
    assert "above the upper bound" in problems[0]
    assert problems[2] == "layer 1 uses 2 distinct rules, more than the limit 1"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_original_fixtures_import_near_half(path: Path) -> None:
    plan = import_moa_json(path)
    for n in (2048, 4096, 8192, 16384):
        assert 0.4 <= plan.density(n) <= 0.6, (path.name, n, plan.density(n))


def test_original_gqa_import_takes_largest_rule() -> None:
    data = {"alphas": [[0, 100, 0, 0], [0, 0, 0, 0]], "betas": [[0.5, 0.25, 0.125, 0.125], [1, 1, 0.5, 0.5]]}
    fp = ModelFingerprint(num_layers=2, num_attention_heads=4, num_key_value_heads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = import_moa_json(data, fp)
    assert any("largest alpha and beta" in str(w.message) for w in caught)
    assert plan.alphas.tolist() == [[100, 0], [0, 0]]
    assert plan.betas.tolist() == [[0.5, 0.125], [1, 0.5]]
    # Every query head keeps at least its own span at every length.
    for n in (256, 1000, 4096):
        from moa_plan import span

        member = span(np.array(data["alphas"]), np.array(data["betas"]), n)
        assert (np.repeat(plan.spans(n), 2, axis=1) >= member).all()


def test_export_roundtrip(tmp_path: Path) -> None:
    plan = Plan.from_arrays(GQA, [[0, 64], [0, 0]], [[0.5, 0.25], [1.0, 0.125]])
    data = export_moa_json(plan, tmp_path / "orig.json")
    assert len(data["alphas"][0]) == 8
    back = import_moa_json(tmp_path / "orig.json", GQA)
    assert back.rules == plan.rules
    assert json.loads((tmp_path / "orig.json").read_text()) == data


def test_all_six_fixtures_present() -> None:
    assert len(list(FIXTURES.glob("*.json"))) == 6


def test_architecture_class_and_model_type_match() -> None:
    saved = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_size": 128,
    }
    fresh = {**saved, "architectures": None}
    a, b = ModelFingerprint.from_config(saved), ModelFingerprint.from_config(fresh)
    assert (a.architecture, b.architecture) == ("Qwen2ForCausalLM", "qwen2")
    assert a.differences(b) == []
    other = ModelFingerprint.from_config({**saved, "architectures": ["LlamaForCausalLM"]})
    assert other.differences(a) == ["architecture: plan has LlamaForCausalLM, model has Qwen2ForCausalLM"]
