"""Hostile input across every command: each case exits 2 with one sentence and no traceback.

The cases span plan files, profile files, records and calibration files, model paths and CLI
options (wrong shapes, NaN/inf, truncated files, wrong dtypes, mismatched fingerprints, huge
values, negative lengths, unicode paths).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from moa_plan import ModelFingerprint, Plan, Profile, save_profile
from moa_plan.cli import main

Builder = Callable[[Path, Path], list[str]]


def _tiny_fp(model: Path) -> ModelFingerprint:
    return ModelFingerprint.from_model_path(model)


def _plan(model: Path, tmp: Path, mutate: Callable[[dict], None] | None = None, name: str = "p.json") -> Path:
    data = json.loads(Plan.uniform(_tiny_fp(model), 0.5).to_json())
    if mutate:
        mutate(data)
    path = tmp / name
    path.write_text(json.dumps(data, allow_nan=True))
    return path


def _profile(model: Path, tmp: Path, name: str = "prof.safetensors", fp: ModelFingerprint | None = None,
             hist: np.ndarray | None = None) -> Path:  # fmt: skip
    fp = fp or _tiny_fp(model)
    length, sink = 256, 64
    h = hist if hist is not None else np.ones((fp.num_layers, fp.num_attention_heads, length - sink), np.float32)
    path = tmp / name
    if hist is not None:
        meta = {"format": "moa-profile", "format_version": "1", "fingerprint": fp.model_dump_json(),
                "length": str(length), "sink": str(sink), "block": "64", "num_samples": "1"}  # fmt: skip
        save_file({"hist": h, "sink": np.ones((fp.num_layers, fp.num_attention_heads), np.float32)}, str(path),
                  metadata=meta)  # fmt: skip
        return path
    p = Profile(model=fp, length=length, sink=sink, block=64, num_samples=1, hist=h,
                sink_influence=np.ones((fp.num_layers, fp.num_attention_heads), np.float32))  # fmt: skip
    return save_profile(p, path)


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _nan_alpha(d: dict) -> None:
    d["rules"][0][0]["alpha"] = float("nan")


def _other_model(d: dict) -> None:
    d["model"]["num_layers"] += 1
    d["rules"].append(d["rules"][0])


def _truncated_profile(m: Path, t: Path) -> Path:
    good = _profile(m, t, "good.safetensors").read_bytes()
    return _write(t, "cut.safetensors", good[: len(good) // 2])


def _other_fp(m: Path) -> ModelFingerprint:
    return _tiny_fp(m).model_copy(update={"num_layers": 5})


def _header_lies(m: Path, t: Path) -> Path:
    header = json.dumps({"hist": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}).encode()
    return _write(t, "lie.safetensors", struct.pack("<Q", len(header)) + header)


CASES: list[tuple[str, Builder, str]] = [
    # plan files
    (
        "generate-plan-nan",
        lambda m, t: ["generate", "--model", str(m), "--plan", str(_plan(m, t, _nan_alpha)), "--prompt", "x"],
        "finite",
    ),
    (
        "generate-plan-other-model",
        lambda m, t: ["generate", "--model", str(m), "--plan", str(_plan(m, t, _other_model)), "--prompt", "x"],
        "num_layers",
    ),
    (
        "generate-plan-truncated",
        lambda m, t: [
            "generate",
            "--model",
            str(m),
            "--plan",
            str(_write(t, "p.json", '{"format_version": 1, "mo')),
            "--prompt",
            "x",
        ],
        "not valid JSON",
    ),
    (
        "generate-plan-missing",
        lambda m, t: ["generate", "--model", str(m), "--plan", str(t / "nope.json"), "--prompt", "x"],
        "not found",
    ),
    (
        "eval-plan-other-model",
        lambda m, t: [
            "eval",
            "retrieval",
            "--model",
            str(m),
            "--plan",
            str(_plan(m, t, _other_model)),
            "--out",
            str(t / "o"),
        ],
        "num_layers",
    ),
    (
        "eval-plan-spec-bad",
        lambda m, t: ["eval", "retrieval", "--model", str(m), "--plan", "uniform:abc", "--out", str(t / "o")],
        "uniform:FRACTION",
    ),
    (
        "eval-head-probe-out-of-range",
        lambda m, t: ["eval", "retrieval", "--model", str(m), "--plan", "head:99.0", "--out", str(t / "o")],
        "not a KV head of this model",
    ),
    (
        "validate-plan-dir-empty",
        lambda m, t: [
            "validate",
            "--model",
            str(m),
            "--plans",
            str(t),
            "--data",
            str(t / "v.parquet"),
            "--out",
            str(t / "o"),
        ],
        "no plan files",
    ),
    ("plan-huge-length", lambda m, t: ["plan", "show", str(_plan(m, t)), "--lengths", str(2**50)], "below 2**40"),
    # profile files
    (
        "optimize-profile-missing",
        lambda m, t: ["optimize", "--profiles", str(t / "none.safetensors"), "--density", "0.5", "--out", str(t / "o")],
        "not found",
    ),
    (
        "optimize-profile-truncated",
        lambda m, t: [
            "optimize",
            "--profiles",
            str(_truncated_profile(m, t)),
            "--density",
            "0.5",
            "--out",
            str(t / "o"),
        ],
        "safetensors",
    ),
    (
        "optimize-profile-nan",
        lambda m, t: [
            "optimize",
            "--profiles",
            str(_profile(m, t, hist=np.full((2, 4, 192), np.nan, np.float32))),
            "--density",
            "0.5",
            "--out",
            str(t / "o"),
        ],
        "NaN",
    ),
    (
        "optimize-profile-int-dtype",
        lambda m, t: [
            "optimize",
            "--profiles",
            str(_profile(m, t, hist=np.ones((2, 4, 192), np.int32))),
            "--density",
            "0.5",
            "--out",
            str(t / "o"),
        ],
        "float32 or float64",
    ),
    (
        "optimize-profile-wrong-shape",
        lambda m, t: [
            "optimize",
            "--profiles",
            str(_profile(m, t, hist=np.ones((3, 4, 192), np.float32))),
            "--density",
            "0.5",
            "--out",
            str(t / "o"),
        ],
        "shape",
    ),
    (
        "optimize-profiles-two-models",
        lambda m, t: [
            "optimize",
            "--profiles",
            str(_profile(m, t, "a.safetensors")),
            str(_profile(m, t, "b.safetensors", fp=_other_fp(m))),
            "--density",
            "0.5",
            "--out",
            str(t / "o"),
        ],
        "model",
    ),
    (
        "optimize-profile-header-lies",
        lambda m, t: ["optimize", "--profiles", str(_header_lies(m, t)), "--density", "0.5", "--out", str(t / "o")],
        "safetensors",
    ),
    (
        "optimize-profile-is-plan",
        lambda m, t: ["optimize", "--profiles", str(_plan(m, t)), "--density", "0.5", "--out", str(t / "o")],
        "safetensors",
    ),
    # records and calibration files
    (
        "calibrate-records-empty",
        lambda m, t: [
            "calibrate",
            "--model",
            str(m),
            "--records",
            str(_write(t, "r.jsonl", "")),
            "--out",
            str(t / "c.parquet"),
        ],
        "no records",
    ),
    (
        "calibrate-records-bad-json",
        lambda m, t: [
            "calibrate",
            "--model",
            str(m),
            "--records",
            str(_write(t, "r.jsonl", "{oops\n")),
            "--out",
            str(t / "c.parquet"),
        ],
        "JSON",
    ),
    (
        "calibrate-records-missing-field",
        lambda m, t: [
            "calibrate",
            "--model",
            str(m),
            "--records",
            str(_write(t, "r.jsonl", '{"task": "x"}\n')),
            "--out",
            str(t / "c.parquet"),
        ],
        "context",
    ),
    (
        "calibrate-unknown-task",
        lambda m, t: ["calibrate", "--model", str(m), "--task", "nosuchtask", "--out", str(t / "c.parquet")],
        "nosuchtask",
    ),
    (
        "profile-calibration-missing",
        lambda m, t: ["profile", str(t / "c.parquet"), "--model", str(m), "--out", str(t / "o")],
        "not found",
    ),
    (
        "profile-calibration-garbage",
        lambda m, t: ["profile", str(_write(t, "c.parquet", b"PAR1garbage")), "--model", str(m), "--out", str(t / "o")],
        "parquet",
    ),
    (
        "eval-ppl-data-garbage",
        lambda m, t: ["eval", "ppl", "--model", str(m), "--data", str(_write(t, "c.parquet", b"\x00" * 64))],
        "parquet",
    ),
    # model paths
    (
        "calibrate-model-missing",
        lambda m, t: ["calibrate", "--model", str(t / "modèle ü"), "--task", "rewrite", "--out", str(t / "c.parquet")],
        "modèle ü",
    ),
    (
        "profile-model-no-config",
        lambda m, t: ["profile", str(_write(t, "c.parquet", b"x")), "--model", str(t), "--out", str(t / "o")],
        "",
    ),
    (
        "generate-model-is-file",
        lambda m, t: [
            "generate",
            "--model",
            str(_plan(m, t)),
            "--plan",
            str(_plan(m, t, None, "q.json")),
            "--prompt",
            "x",
        ],
        "",
    ),
    (
        "eval-model-missing",
        lambda m, t: ["eval", "retrieval", "--model", str(t / "нет"), "--out", str(t / "o")],
        "not a model directory",
    ),
    (
        "compress-model-missing",
        lambda m, t: ["compress", "--model", str(t / "missing"), "--density", "0.5", "--out", str(t / "o")],
        "not a model directory",
    ),
    (
        "plan-dense-model-missing",
        lambda m, t: ["plan", "dense", "--model", str(t / "x"), "-o", str(t / "d.json")],
        "no model config found",
    ),
    # CLI options
    (
        "optimize-density-above-one",
        lambda m, t: ["optimize", "--profiles", str(_profile(m, t)), "--density", "1.5", "--out", str(t / "o")],
        "density",
    ),
    (
        "optimize-density-negative",
        lambda m, t: ["optimize", "--profiles", str(_profile(m, t)), "--density", "-0.2", "--out", str(t / "o")],
        "density",
    ),
    (
        "calibrate-negative-length",
        lambda m, t: [
            "calibrate",
            "--model",
            str(m),
            "--task",
            "rewrite",
            "--lengths",
            "-5",
            "--out",
            str(t / "c.parquet"),
        ],
        "positive",
    ),
    (
        "compress-density-text",
        lambda m, t: ["compress", "--model", str(m), "--density", "half", "--out", str(t / "o")],
        "comma-separated numbers",
    ),
    (
        "compress-density-zero",
        lambda m, t: ["compress", "--model", str(m), "--density", "0", "--out", str(t / "o")],
        "densities must lie in (0, 1]",
    ),
    ("bench-density-two", lambda m, t: ["bench", "e2e", "--densities", "2", "--out", str(t / "o")], "densities"),
    (
        "bench-model-missing",
        lambda m, t: ["bench", "e2e", "--model", str(t / "x"), "--out", str(t / "o")],
        "config.json",
    ),
    (
        "uniform-fraction-zero",
        lambda m, t: ["plan", "uniform", "--model", str(m), "--fraction", "0", "-o", str(t / "u.json")],
        "fraction",
    ),
    ("lengths-text", lambda m, t: ["plan", "show", str(_plan(m, t)), "--lengths", "abc"], "comma-separated integers"),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_exits_2_with_one_sentence(tiny_model: Path, tmp_path: Path, build: Builder,
                                                  expected: str) -> None:  # fmt: skip
    args = build(tiny_model, tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip() and not ln.startswith("Warning")]
    assert lines, result.stderr
    assert lines[-1].startswith("Error: "), result.stderr
    assert expected in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30
