"""The `moa plan` commands, and malformed plan files: each exits 2 with one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa_plan import ModelFingerprint, Plan
from moa_plan.cli import main

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "moa-original-plans"
GOLDEN = HERE / "golden" / "plan_v1_gqa.json"

FP = ModelFingerprint(
    architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def good_plan() -> dict:
    return json.loads(Plan.uniform(FP, 0.5).to_json())


def mutate(**changes: object) -> dict:
    data = good_plan()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return data


_DELETE = object()

# (id, file content or None for "no file" / a directory, expected words in the message)
MALFORMED = [
    ("alpha-string", json.dumps(mutate(rules__0__0={"alpha": "x", "beta": 0.5})), "rules.0.0.alpha"),
    ("alpha-nan", json.dumps(mutate(rules__0__0={"alpha": float("nan"), "beta": 0.5})), "finite"),
    ("alpha-inf", json.dumps(mutate(rules__0__0={"alpha": float("inf"), "beta": 0.5})), "finite"),
    ("beta-negative", json.dumps(mutate(rules__0__1={"alpha": 0, "beta": -0.1})), "beta must be a number in [0, 1]"),
    ("beta-above-one", json.dumps(mutate(rules__1__0={"alpha": 0, "beta": 1.5})), "beta must be a number in [0, 1]"),
    ("too-few-layers", json.dumps(mutate(rules=[[{"alpha": 0, "beta": 1}] * 2])), "1 layers but the model"),
    ("too-many-heads", json.dumps(mutate(rules__1=[{"alpha": 0, "beta": 1}] * 3)), "rules[1] has 3 heads"),
    ("unknown-key", json.dumps(mutate(colour="blue")), "colour"),
    ("unknown-rule-key", json.dumps(mutate(rules__0__0={"alpha": 0, "beta": 1, "gamma": 2})), "gamma"),
    ("future-version", json.dumps(mutate(format_version=7)), "format_version 7 is newer"),
    ("zero-version", json.dumps(mutate(format_version=0)), "format_version must be >= 1"),
    ("missing-rules", json.dumps(mutate(rules=_DELETE)), "field rules"),
    ("missing-model", json.dumps(mutate(model=_DELETE)), "field model"),
    ("heads-not-divisible", json.dumps(mutate(model__num_attention_heads=3)), "multiple of"),
    ("negative-sink", json.dumps(mutate(sink=-1)), "field sink"),
    ("zero-block", json.dumps(mutate(block=0)), "field block"),
    ("huge-sink", json.dumps(mutate(sink=10**12)), "field sink"),
    ("truncated", json.dumps(good_plan())[:57], "not valid JSON"),
    ("empty", "", "is empty"),
    ("whitespace", "  \n ", "is empty"),
    ("json-list", "[1, 2]", "must hold a JSON object"),
    ("not-utf8", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("original-format-shape", json.dumps({"alphas": [[0, 0]], "betas": [[0.5]]}), "alphas has shape"),
    ("original-format-beta", json.dumps({"alphas": [[0, 0]], "betas": [[0.5, 2.0]]}), "betas must lie in [0, 1]"),
    ("directory", None, "got a directory"),
    ("missing-file", "MISSING", "not found"),
]


@pytest.mark.parametrize(("content", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("command", ["show", "validate"])
def test_malformed_plan_exits_2_with_one_sentence(
    tmp_path: Path, command: str, content: str | bytes | None, expected: str
) -> None:
    path = tmp_path / "plän ü.json"
    if content is None:
        path.mkdir()
    elif content != "MISSING":
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run("plan", command, str(path))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]
    assert "Traceback" not in err


def test_show_prints_densities_for_every_fixture() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        code, out, err = run("plan", "show", str(path), "--json")
        assert code == 0, err
        densities = json.loads(out)["kv_density"]
        assert set(densities) == {"2048", "4096", "8192", "16384"}
        assert all(0.4 < d < 0.6 for d in densities.values())


def test_show_table(tmp_path: Path) -> None:
    code, out, _ = run("plan", "show", str(GOLDEN), "--lengths", "1024,4096")
    assert code == 0
    assert "KV density" in out
    assert "4096" in out


def test_validate_budget(tmp_path: Path) -> None:
    path = Plan.uniform(FP, 0.5).save(tmp_path / "u.json")
    assert run("plan", "validate", str(path), "--budget", "0.5", "--lengths", "2048,4096")[0] == 0
    code, _, err = run("plan", "validate", str(path), "--budget", "0.25", "--lengths", "4096")
    assert code == 2
    assert "above the upper bound 0.2500" in err


def test_validate_against_model(tmp_path: Path) -> None:
    path = Plan.dense(FP).save(tmp_path / "d.json")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"num_hidden_layers": 3, "num_attention_heads": 4, "hidden_size": 32}))
    code, _, err = run("plan", "validate", str(path), "--model", str(tmp_path))
    assert code == 2
    assert "num_layers: plan has 2, model has 3" in err


def test_convert_both_ways(tmp_path: Path) -> None:
    src = FIXTURES / "lmsys--vicuna-7b-v1.5-16k.moa_alpha_beta.json"
    out = tmp_path / "plan.json"
    assert run("plan", "convert", str(src), "--from", "moa-json", "-o", str(out))[0] == 0
    back = tmp_path / "orig.json"
    assert run("plan", "convert", str(out), "--to", "moa-json", "-o", str(back))[0] == 0
    assert json.loads(back.read_text()) == json.loads(src.read_text())


def test_convert_needs_one_direction(tmp_path: Path) -> None:
    code, _, err = run("plan", "convert", str(GOLDEN), "-o", str(tmp_path / "x.json"))
    assert code == 2
    assert "exactly one of" in err


def test_baselines_from_model_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 32,
            }
        )
    )
    assert (
        run("plan", "uniform", "--model", str(tmp_path), "--fraction", "0.25", "-o", str(tmp_path / "u.json"))[0] == 0
    )
    assert Plan.load(tmp_path / "u.json").density(8192) == 0.25
    assert run("plan", "dense", "--model", str(tmp_path), "-o", str(tmp_path / "d.json"))[0] == 0
    code, _, err = run("plan", "dense", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json"))
    assert code == 2
    assert "no model config found" in err


def test_bad_lengths_option() -> None:
    code, _, err = run("plan", "show", str(GOLDEN), "--lengths", "10,-3")
    assert code == 2
    assert "positive integers" in err


def test_read_only_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moa_plan.io as io

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    # Root ignores directory permissions, so simulate what a read-only mount answers.
    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    code, _, err = run(
        "plan",
        "convert",
        str(FIXTURES / "lmsys--vicuna-7b-v1.5-16k.moa_alpha_beta.json"),
        "--from",
        "moa-json",
        "-o",
        str(tmp_path / "p.json"),
    )
    assert code == 2
    assert "cannot write" in err
    assert "Read-only file system" in err
    assert list(tmp_path.iterdir()) == []


def test_write_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moa_plan.io as io

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", boom)
    out = tmp_path / "out"
    src = FIXTURES / "lmsys--vicuna-7b-v1.5-16k.moa_alpha_beta.json"
    code, _, err = run("plan", "convert", str(src), "--from", "moa-json", "-o", str(out / "p.json"))
    assert code == 2
    assert "No space left on device" in err
    assert list(out.iterdir()) == []


def test_schema_command_prints_json() -> None:
    code, out, _ = run("plan", "schema")
    assert code == 0
    assert json.loads(out)["title"] == "Plan"
