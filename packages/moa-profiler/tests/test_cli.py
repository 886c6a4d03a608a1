"""The commands: summaries, files, and bad input ending with one sentence, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from moa_plan import ModelFingerprint, load_profile
from moa_plan.cli import main
from moa_profiler.dataset import read_calibration
from moa_profiler.testing import make_model, make_tokenizer, records_file


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_sentence(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: "), stderr
    assert fragment in lines[-1]
    assert "Traceback" not in stderr


def no_files(directory: Path, *names: str) -> None:
    for name in names:
        assert not (directory / name).exists()
    assert not list(directory.rglob(".*.tmp")), "a temp file was left behind"


def test_calibrate_and_profile_commands(tmp_path: Path, model_dir: Path):
    records = records_file(tmp_path / "r.jsonl", [100, 110, 175])
    out = tmp_path / "calib.parquet"
    code, stdout, stderr = run(
        "calibrate", "--model", model_dir, "--records", records, "--lengths", "96,160", "--max-new-tokens", 5,
        "--max-cut", 0.6, "--fit", "largest", "--quiet", "--json", "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["per_length"] == {"96": 2, "160": 1}
    calib = read_calibration(out)
    assert calib.fingerprint == ModelFingerprint.from_model_path(model_dir)
    assert calib.provenance["versions"]["moa-profiler"]
    code, stdout, stderr = run(
        "profile", out, "--model", model_dir, "-o", tmp_path / "prof", "--sink", 8, "--block", 16, "--block-map",
        "--quiet", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, stderr
    assert "length" in stdout
    assert "wrote 2 profile(s)" in stdout
    for n, count in ((96, 2), (160, 1)):
        p = load_profile(tmp_path / "prof" / f"profile-{n}.safetensors", model=calib.fingerprint)
        assert p.num_samples == count
        assert p.hist.shape == (2, 4, n - 8)
        assert p.block_map is not None
        assert p.block_map.shape == (2, 4, n // 16, n // 16)
        # Every entry is either a sink entry or a distance entry, and the block map holds them all.
        np.testing.assert_allclose(p.block_map.sum(), p.hist.sum() + p.sink_influence.sum(), rtol=1e-6)
        assert p.mean_loss is not None
        assert p.mean_loss > 0
    assert not (tmp_path / "prof" / ".checkpoints").exists() or not list((tmp_path / "prof" / ".checkpoints").iterdir())


def test_empty_records(tmp_path: Path, model_dir: Path):
    (tmp_path / "empty.jsonl").write_text("")
    code, _, stderr = run(
        "calibrate",
        "--model",
        model_dir,
        "--records",
        tmp_path / "empty.jsonl",
        "-o",
        tmp_path / "c.parquet",
        "--quiet",
    )
    assert_one_sentence(code, stderr, "no records")
    no_files(tmp_path, "c.parquet")


def test_reference_answers_need_a_reference(tmp_path: Path, model_dir: Path):
    records = records_file(tmp_path / "r.jsonl", [100])  # records without an answer
    args = ("calibrate", "--model", model_dir, "--records", records, "--lengths", 64, "--max-new-tokens", 4)
    args += ("--answers", "reference")
    code, _, stderr = run(*args, "-o", tmp_path / "c.parquet", "--quiet")
    assert_one_sentence(code, stderr, "has no reference answer")
    no_files(tmp_path, "c.parquet")


def test_sample_longer_than_every_bucket(tmp_path: Path, model_dir: Path):
    records = records_file(tmp_path / "r.jsonl", [100, 900])
    code, _, stderr = run(
        "calibrate",
        "--model",
        model_dir,
        "--records",
        records,
        "--lengths",
        "96",
        "--fit",
        "largest",
        "-o",
        tmp_path / "c.parquet",
        "--quiet",
    )
    assert_one_sentence(code, stderr, "longer than every bucket")
    no_files(tmp_path, "c.parquet")


def test_tokenizer_without_chat_template(tmp_path: Path, save_model_dir):
    model = save_model_dir(tmp_path / "base", chat_template=None)
    records = records_file(tmp_path / "r.jsonl", [100])
    code, _, stderr = run(
        "calibrate", "--model", model, "--records", records, "--lengths", "96", "-o", tmp_path / "c.parquet", "--quiet"
    )
    assert_one_sentence(code, stderr, "no chat template")
    no_files(tmp_path, "c.parquet")
    code, _, stderr = run(
        "calibrate", "--model", model, "--records", records, "--lengths", "96", "-o", tmp_path / "c.parquet", "--quiet",
        "--template", "plain", "--max-new-tokens", 4,
    )  # fmt: skip
    assert code == 0, stderr


def test_nan_loss(tmp_path: Path, calibration_file: Path):
    model = make_model(layers=2, heads=4, kv_heads=2, seed=1, std=0.2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan-model")
    make_tokenizer().save_pretrained(tmp_path / "nan-model")
    out = tmp_path / "prof"
    code, _, stderr = run(
        "profile", calibration_file, "--model", tmp_path / "nan-model", "-o", out, "--sink", 8, "--quiet"
    )
    assert_one_sentence(code, stderr, "loss is nan")
    no_files(out, "profile-96.safetensors", "profile-160.safetensors")


def test_calibration_of_another_model(tmp_path: Path, calibration_file: Path, save_model_dir):
    other = save_model_dir(tmp_path / "other", layers=3)
    code, _, stderr = run("profile", calibration_file, "--model", other, "-o", tmp_path / "prof", "--quiet")
    assert_one_sentence(code, stderr, "another model")
    no_files(tmp_path / "prof", "profile-96.safetensors")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["profile", "missing.parquet", "--model", "M", "-o", "out"], "calibration file not found"),
        (["calibrate", "--model", "nowhere", "--task", "lines", "-o", "c.parquet"], "not a model directory"),
    ],
    ids=["missing-calibration", "missing-model"],
)
def test_missing_files(tmp_path: Path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(*args)
    assert_one_sentence(code, stderr, fragment)


def test_records_and_task_are_exclusive(tmp_path: Path, model_dir: Path):
    code, _, stderr = run("calibrate", "--model", model_dir, "-o", tmp_path / "c.parquet")
    assert code == 2
    assert "exactly one of --records or --task" in stderr


def test_calibrate_from_synthetic_task(tmp_path: Path, model_dir: Path):
    """--task draws records from moa_plan.tasks at each length (or says clearly that it cannot)."""
    from moa_profiler.records import tasks_available

    out = tmp_path / "c.parquet"
    args = ["calibrate", "--model", model_dir, "--task", "lines", "--lengths", "96,128", "--num-samples", 2]
    code, stdout, stderr = run(*args, "--max-new-tokens", 4, "--quiet", "--json", "-o", out)
    if not tasks_available():
        assert_one_sentence(code, stderr, "no synthetic tasks")
        return
    assert code == 0, stderr
    assert json.loads(stdout)["per_length"] == {"96": 2, "128": 2}
    calib = read_calibration(out)
    assert calib.provenance["source"].startswith("moa_plan.tasks:lines")
    assert {s.task for s in calib.samples} == {"lines"}


def test_profile_ablation_statistic(tmp_path: Path, calibration_file: Path, model_dir: Path):
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "-o", tmp_path / "prof", "--sink", 8, "--block", 16,
        "--statistic", "ablation", "--ablation-points", 3, "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    p = load_profile(tmp_path / "prof" / "profile-96.safetensors")
    assert "ablation" in (p.notes or "")
    assert (p.hist >= 0).all() and (p.sink_influence == 0).all()
    # Only the measured windows (16, 48, 80: at most 3 of the 5 whole blocks below 88 keys) carry steps.
    loss = p.window_loss(np.array([16.0, 48.0, 80.0, 88.0])[None, None, :].repeat(2, 0).repeat(2, 1))
    assert (np.diff(loss, axis=-1) <= 1e-12).all() and (loss[..., -1] == 0).all()
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "-o", tmp_path / "p2", "--statistic", "ablation",
        "--block-map", "--quiet",
    )  # fmt: skip
    assert_one_sentence(code, stderr, "no block map")
    no_files(tmp_path / "p2", "profile-96.safetensors")


def test_calibrate_records_feed_every_length(tmp_path: Path, model_dir: Path):
    """--records defaults to --fit each: one document is cut to every length it can fill (MoA's way)."""
    records = records_file(tmp_path / "r.jsonl", [100, 110, 400])
    out = tmp_path / "calib.parquet"
    code, stdout, stderr = run(
        "calibrate", "--model", model_dir, "--records", records, "--lengths", "96,160,320", "--max-new-tokens", 5,
        "--quiet", "--json", "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["per_length"] == {"96": 3, "160": 1, "320": 1}
    calib = read_calibration(out)
    long = [s for s in calib.samples if s.record_index == 2]
    assert sorted(s.bucket for s in long) == [96, 160, 320]
    assert all(len(s.input_ids) == s.bucket for s in calib.samples)
    assert len({s.sample_id for s in calib.samples}) == len(calib.samples)
    # Shorter lengths cut more of the same document.
    cuts = [s.cut_tokens for s in sorted(long, key=lambda s: s.bucket)]
    assert cuts[0] > cuts[1] > cuts[2] >= 0


def test_greedy_from_extends_a_finished_search(tmp_path: Path, calibration_file: Path, model_dir: Path, monkeypatch):
    """A search to 1/2 of the KV heads, extended with --greedy-from to 3/4, cuts what one search to 3/4 cuts (group 1:
    the same rounds); from a path whose stop is reached, the profile is rebuilt without a forward pass."""
    import moa_profiler.greedy as greedy

    common = ["--model", model_dir, "--sink", 8, "--block", 16, "--statistic", "greedy", "--greedy-group", 1, "--quiet"]
    common += ["--lengths", 96]
    assert run("profile", calibration_file, *common, "--greedy-stop", 0.75, "-o", tmp_path / "once")[0] == 0
    assert run("profile", calibration_file, *common, "--greedy-stop", 0.5, "-o", tmp_path / "half")[0] == 0
    half = json.loads((tmp_path / "half" / "profile-96.greedy.json").read_text())
    assert len(half["order"]) == 2 and half["length"] == 96 and half["sink"] == 8 and half["block"] == 16
    code, _, stderr = run(
        "profile", calibration_file, *common, "--greedy-stop", 0.75, "--greedy-from", tmp_path / "half",
        "-o", tmp_path / "more",
    )  # fmt: skip
    assert code == 0, stderr
    once = json.loads((tmp_path / "once" / "profile-96.greedy.json").read_text())
    more = json.loads((tmp_path / "more" / "profile-96.greedy.json").read_text())
    assert more["order"] == once["order"] and len(once["order"]) == 3
    # It continues the path it is given: from another first two cuts, it keeps them and measures only round 3.
    calls: list[int] = []
    counted = greedy.answer_loss
    monkeypatch.setattr(greedy, "answer_loss", lambda *a: calls.append(1) or counted(*a))
    other = [h for h in ([0, 0], [0, 1], [1, 0], [1, 1]) if h not in half["order"]]
    (tmp_path / "other.json").write_text(json.dumps({**half, "order": other}))
    code, _, stderr = run(
        "profile", calibration_file, *common, "--greedy-stop", 0.75, "--greedy-from", tmp_path / "other.json",
        "-o", tmp_path / "other",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads((tmp_path / "other" / "profile-96.greedy.json").read_text())["order"][:2] == other
    assert len(calls) == 6 * (1 + 2)  # 6 samples: the base with two cut, then each of the two heads left
    assert np.allclose([v for *_, v in more["values"]], [v for *_, v in once["values"]], atol=1e-9)

    def no_forward(*args: object) -> None:
        raise AssertionError("a forward pass")

    monkeypatch.setattr(greedy, "answer_loss", no_forward)
    seed = tmp_path / "once" / "profile-96.greedy.json"
    code, _, stderr = run(
        "profile", calibration_file, *common, "--greedy-stop", 0.75, "--greedy-from", seed, "-o", tmp_path / "re"
    )
    assert code == 0, stderr
    rebuilt, first = (
        load_profile(tmp_path / "re" / "profile-96.safetensors"),
        load_profile(tmp_path / "once" / "profile-96.safetensors"),
    )
    assert np.array_equal(rebuilt.hist, first.hist)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"sink": 4}, "measured with sink 4, not 8"),
        ({"order": [[2, 0]]}, "KV head (2, 0), which this model (2 layers x 2 KV heads) lacks"),
        ({"order": [[0, 0], [0, 0]]}, "cuts a KV head twice"),
        ({"values": [[0, 0, 0.1]]}, "no value for KV head (0, 1)"),
        ({"losses": None}, "is not a greedy path"),
        ({"samples": "another"}, "measured with samples another"),
    ],
    ids=["sink", "foreign-head", "twice", "unvalued", "malformed", "samples"],
)
def test_greedy_from_refuses_another_search(tmp_path: Path, calibration_file: Path, model_dir: Path, change, fragment):
    common = ["--model", model_dir, "--sink", 8, "--block", 16, "--statistic", "greedy", "--quiet", "--lengths", 96]
    assert run("profile", calibration_file, *common, "--greedy-stop", 0.5, "-o", tmp_path / "half")[0] == 0
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({**json.loads((tmp_path / "half" / "profile-96.greedy.json").read_text()), **change}))
    code, _, stderr = run("profile", calibration_file, *common, "--greedy-from", seed, "-o", tmp_path / "out")
    assert_one_sentence(code, stderr, fragment)
    no_files(tmp_path / "out", "profile-96.safetensors", "profile-96.greedy.json")


def test_greedy_from_needs_the_greedy_statistic_and_a_file(tmp_path: Path, calibration_file: Path, model_dir: Path):
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "--greedy-from", tmp_path, "-o", tmp_path / "o", "--quiet"
    )
    assert_one_sentence(code, stderr, "add --statistic greedy")
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "--statistic", "greedy", "--greedy-from",
        tmp_path / "nowhere.json", "-o", tmp_path / "o", "--quiet",
    )  # fmt: skip
    assert_one_sentence(code, stderr, "does not exist")


def test_profile_gate_statistic(tmp_path: Path, calibration_file: Path, model_dir: Path):
    """--statistic gate writes a one-window profile whose cut cost is each KV head's trained value, and the gates."""
    common = ["--model", model_dir, "--sink", 8, "--block", 16, "--statistic", "gate", "--lengths", 96, "--quiet"]
    code, _, stderr = run(
        "profile", calibration_file, *common, "--gate-steps", 12, "--gate-lr", 0.1, "--gate-penalty", 0.2,
        "-o", tmp_path / "prof",
    )  # fmt: skip
    assert code == 0, stderr
    p = load_profile(tmp_path / "prof" / "profile-96.safetensors")
    record = json.loads((tmp_path / "prof" / "profile-96.gates.json").read_text())
    assert "gate training" in (p.notes or "") and p.num_samples == 6
    assert (record["steps"], record["lr"], record["penalty"], record["sink"], record["block"]) == (12, 0.1, 0.2, 8, 16)
    assert len(record["losses"]) == 12 and np.array(record["gates"]).shape == (2, 2)
    values = {(layer, kv): v for layer, kv, v in record["values"]}
    cut = p.window_loss(np.full((2, 2), 16.0))  # the sink + one block
    for (layer, kv), value in values.items():
        assert 0.0 <= value <= 0.2
        assert cut[layer, kv] == pytest.approx(value, abs=1e-9)
    assert (p.window_loss(np.full((2, 2), 88.0)) == 0).all()  # the whole head costs nothing
    assert p.mean_loss == pytest.approx(sum(record["losses"]) / 12, rel=1e-6)
    # Bad gate settings are one sentence.
    code, _, stderr = run("profile", calibration_file, *common, "--gate-lr", 0, "-o", tmp_path / "bad")
    assert_one_sentence(code, stderr, "--gate-lr")
    no_files(tmp_path / "bad", "profile-96.safetensors", "profile-96.gates.json")


def test_gate_from_rebuilds_the_profile_without_training(
    tmp_path: Path, calibration_file: Path, model_dir: Path, monkeypatch
):
    """--gate-from takes the gates of an earlier run: the same profile as the training wrote, and no forward pass."""
    import moa_profiler.gate as gate

    common = ["--model", model_dir, "--sink", 8, "--block", 16, "--statistic", "gate", "--lengths", 96, "--quiet"]
    common += ["--gate-steps", 6, "--gate-lr", 0.1, "--gate-penalty", 0.2]
    assert run("profile", calibration_file, *common, "-o", tmp_path / "trained")[0] == 0

    def no_forward(*args: object) -> None:
        raise AssertionError("a forward pass")

    monkeypatch.setattr(gate, "answer_loss", no_forward)
    for seed in (tmp_path / "trained", tmp_path / "trained" / "profile-96.gates.json"):
        code, _, stderr = run("profile", calibration_file, *common, "--gate-from", seed, "-o", tmp_path / "re")
        assert code == 0, stderr
        rebuilt, trained = (load_profile(tmp_path / d / "profile-96.safetensors") for d in ("re", "trained"))
        assert np.array_equal(rebuilt.hist, trained.hist) and rebuilt.mean_loss == trained.mean_loss
        assert (
            json.loads((tmp_path / "re" / "profile-96.gates.json").read_text())["values"]
            == json.loads((tmp_path / "trained" / "profile-96.gates.json").read_text())["values"]
        )


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"steps": 7}, "trained with steps 7, not 6"),
        ({"block": 8}, "trained with block 8, not 16"),
        ({"samples": "another"}, "trained with samples another"),
        ({"values": [[0, 0, 0.1], [0, 1, 0.1], [1, 0, 0.1], [2, 1, 0.1]]}, "KV head (2, 1), which this model"),
        ({"values": [[0, 0, 0.1]]}, "no value for KV head (0, 1)"),
        ({"gates": None}, "is not a gates record"),
    ],
    ids=["steps", "block", "samples", "foreign-head", "unvalued", "malformed"],
)
def test_gate_from_refuses_other_gates(tmp_path: Path, calibration_file: Path, model_dir: Path, change, fragment):
    common = ["--model", model_dir, "--sink", 8, "--block", 16, "--statistic", "gate", "--lengths", 96, "--quiet"]
    common += ["--gate-steps", 6, "--gate-lr", 0.1]
    assert run("profile", calibration_file, *common, "-o", tmp_path / "trained")[0] == 0
    seed = tmp_path / "seed.json"
    record = json.loads((tmp_path / "trained" / "profile-96.gates.json").read_text())
    seed.write_text(json.dumps({**record, **change}))
    code, _, stderr = run("profile", calibration_file, *common, "--gate-from", seed, "-o", tmp_path / "out")
    assert_one_sentence(code, stderr, fragment)
    no_files(tmp_path / "out", "profile-96.safetensors", "profile-96.gates.json")


def test_gate_from_needs_the_gate_statistic_and_a_file(tmp_path: Path, calibration_file: Path, model_dir: Path):
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "--gate-from", tmp_path, "-o", tmp_path / "o", "--quiet"
    )
    assert_one_sentence(code, stderr, "add --statistic gate")
    code, _, stderr = run(
        "profile", calibration_file, "--model", model_dir, "--statistic", "gate", "--gate-from", tmp_path / "none",
        "-o", tmp_path / "o", "--quiet",
    )  # fmt: skip
    assert_one_sentence(code, stderr, "does not exist")


def _fake_essays(cache: Path) -> None:
    """Sixteen small essays in a moa cache (``$MOA_CACHE_DIR/essays``), sentences of plain words."""
    (cache / "essays").mkdir(parents=True)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "lamp", "green", "quiet", "small", "table"]
    for n in range(16):
        sentences = [
            f"Essay{n} line{s} " + " ".join(words[(n + s + j) % len(words)] for j in range(6 + s % 4)) + "."
            for s in range(120)
        ]
        (cache / "essays" / f"essay{n:02d}.txt").write_text(f"Title {n}\n\n" + " ".join(sentences), encoding="utf-8")


def test_recall_records_take_lines(tmp_path: Path, monkeypatch):
    """task_records passes --lines on: one fact line per record instead of four (counted in the text)."""
    import re

    from moa_profiler.records import task_records

    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path))
    _fake_essays(tmp_path)
    count = lambda t: len(t.split())  # noqa: E731
    fact = r"The special magic number for \S+ is \d{7}\."
    for lines, expected in ((None, 4), (1, 1), (2, 2)):
        options = None if lines is None else {"lines": lines}
        records = task_records("facts", [300], 3, count_tokens=count, overhead=0, seed=3, options=options)
        assert len(records) == 3
        for r in records:
            assert len(re.findall(fact, r.context)) == expected
            assert r.metadata["line"] in r.context and r.metadata["reference"] in r.metadata["line"]


def test_calibrate_recall_lines_and_margin(tmp_path: Path, model_dir: Path, monkeypatch):
    """--lines and --margin shape --task records (and say so in the provenance); misuse is one sentence."""
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path))
    _fake_essays(tmp_path)
    out = tmp_path / "c.parquet"
    base = ["calibrate", "--model", model_dir, "--lengths", "400", "--num-samples", 2, "--template", "plain"]
    code, stdout, stderr = run(
        *base, "--task", "facts,codes", "--lines", 1, "--margin", 40, "--answers", "reference", "--quiet", "--json",
        "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["per_length"] == {"400": 4}
    calib = read_calibration(out)
    assert calib.provenance["source"] == "moa_plan.tasks:facts,codes seed=0 lines=1 margin=40"
    assert all(s.bucket == 400 and len(s.input_ids) == 400 and s.answer_end > s.answer_start for s in calib.samples)
    bad = tmp_path / "bad.parquet"
    code, _, stderr = run(*base, "--task", "facts,lines", "--lines", 1, "-o", bad)
    assert_one_sentence(code, stderr, "--lines applies to the recall tasks")
    assert "lines" in stderr.strip().splitlines()[-1].split("not to")[-1]
    records = records_file(tmp_path / "r.jsonl", [200])
    code, _, stderr = run(*base, "--records", records, "--margin", 8, "-o", bad)
    assert_one_sentence(code, stderr, "a --records file is used as it is")
    code, _, stderr = run(*base, "--task", "facts", "--lines", 0, "-o", bad)
    assert code == 2 and "--lines" in stderr and "Traceback" not in stderr
    no_files(tmp_path, "bad.parquet")
