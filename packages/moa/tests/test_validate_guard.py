"""`moa validate` with a perplexity guard: the lowest answer loss among plans within a perplexity bound of dense."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from moa.evaluate import PlanSpec, essay_perplexity, essay_texts, load_model
from moa.validate import validate_plans
from moa_plan import MoaError, ModelFingerprint, Plan
from moa_plan.assets import read_essays
from moa_plan.cli import main
from moa_plan.tasks import vocabulary
from moa_profiler import CalibrationSample, CalibrationSet, write_calibration

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "models" / "moa-reference"
pytestmark = pytest.mark.skipif(not (REFERENCE / "config.json").is_file(), reason="no reference model")


@pytest.fixture(scope="module")
def essays_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Essays in the reference vocabulary (filler words, '.' as a word), eight sentences repeated eight times."""
    filler = vocabulary().filler
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("essays")
    for n in range(24):
        sentences = [" ".join(filler[int(w)] for w in rng.integers(0, len(filler), 9)) + " ." for _ in range(8)]
        (path / f"essay{n:02d}.txt").write_text(" ".join(sentences * 8))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, essays_dir: Path) -> dict[str, Any]:
    model, tokenizer = load_model(REFERENCE)
    fp = ModelFingerprint.from_config(model.config)
    root = tmp_path_factory.mktemp("guard")
    # A validation set: essay text whose last 8 tokens are the answer.
    texts = essay_texts(tokenizer, read_essays(essays_dir), [256], 4, seed=3, side="calibration")[256]
    samples = []
    for i, text in enumerate(texts):
        ids = tokenizer(text).input_ids
        sample = CalibrationSample(
            sample_id=f"s{i}", bucket=len(ids), input_ids=ids, answer_start=len(ids) - 8, answer_end=len(ids)
        )
        samples.append(sample)
    data = write_calibration(root / "val.parquet", CalibrationSet(samples=samples))
    plans = {
        "dense": Plan.dense(fp, sink=16, block=16).save(root / "plans" / "dense.json"),
        "half": Plan.uniform(fp, 0.5, sink=16, block=16).save(root / "plans" / "half.json"),
        "tiny": Plan.window(fp, 32, sink=16, block=16).save(root / "plans" / "tiny.json"),
    }
    return {"model": model, "tokenizer": tokenizer, "data": data, "plans": plans, "root": root}


def _dense_loss(model: Any, tokenizer: Any, texts: dict[int, list[str]]) -> float:
    """Oracle: mean next-token loss of the plain model (no plan applied) over every token of the texts."""
    import torch

    total, count = 0.0, 0
    for group in texts.values():
        for text in group:
            ids = tokenizer(text, return_tensors="pt").input_ids
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / count


def test_guard_excludes_plans_above_the_bound(setup: dict[str, Any], essays_dir: Path) -> None:
    s = setup
    texts = essay_texts(s["tokenizer"], read_essays(essays_dir), [128, 256], 2, side="calibration")
    plans = list(s["plans"].values())
    free = validate_plans(s["model"], plans, s["data"], s["root"] / "free")
    guarded = validate_plans(s["model"], plans, s["data"], s["root"] / "guarded", tokenizer=s["tokenizer"],
                             guard_texts=texts, max_ppl_increase=1e9)  # fmt: skip
    by = {r["plan"]: r for r in guarded}
    # The answer losses do not depend on the guard; a bound nobody reaches changes nothing.
    assert [r["plan"] for r in free] == [r["plan"] for r in guarded]
    assert all(r["feasible"] for r in guarded) and guarded[0]["best"]
    # The dense plan is the dense model: no increase; the windows change perplexity (on this toy model either way).
    assert abs(by["dense"]["ppl_increase"]) < 1e-3
    assert abs(by["tiny"]["ppl_increase"]) > 1e-2 and abs(by["half"]["ppl_increase"]) > 1e-2
    # Oracle for the reference: the plain model's loss (no plan applied) over every token of the guard texts,
    # against the windowed plan's pooled loss from `moa eval ppl`'s path (itself checked against masked attention).
    dense = _dense_loss(s["model"], s["tokenizer"], texts)
    for name in ("tiny", "half"):
        rows = essay_perplexity(s["model"], s["tokenizer"], [PlanSpec(name, Plan.load(s["plans"][name]))], texts)
        weights = [r["samples"] * (r["tokens"] - 1) for r in rows]  # predicted tokens per length
        loss = sum(r["loss"] * w for r, w in zip(rows, weights, strict=True)) / sum(weights)
        assert by[name]["ppl_increase"] == pytest.approx(100 * (math.exp(loss - dense) - 1), rel=1e-4)
    # A bound between the two highest increases: the plan above it may not win, whatever its answer loss, and the
    # lowest answer loss of the others does (the CLI test below has a case where this overturns the free choice).
    worst, second = sorted(by, key=lambda p: by[p]["ppl_increase"], reverse=True)[:2]
    bound = (by[worst]["ppl_increase"] + by[second]["ppl_increase"]) / 2
    rows = validate_plans(s["model"], plans, s["data"], s["root"] / "guarded", tokenizer=s["tokenizer"],
                          guard_texts=texts, max_ppl_increase=bound)  # fmt: skip
    assert {r["plan"]: r["feasible"] for r in rows} == {p: p != worst for p in by}
    (winner,) = [r for r in rows if r["best"]]
    assert winner["plan"] == min((p for p in by if p != worst), key=lambda p: by[p]["loss"])
    assert (s["root"] / "guarded" / "plan.json").read_bytes() == s["plans"][winner["plan"]].read_bytes()
    # A rerun reads every row back from its cache: no forward at all, not even dense's.
    seen: list[str] = []
    validate_plans(s["model"], plans, s["data"], s["root"] / "guarded", tokenizer=s["tokenizer"], guard_texts=texts,
                   max_ppl_increase=bound, progress=seen.append)  # fmt: skip
    assert seen == []


def test_guard_with_no_feasible_plan_is_one_clear_error(setup: dict[str, Any], essays_dir: Path) -> None:
    s = setup
    texts = essay_texts(s["tokenizer"], read_essays(essays_dir), [256], 2, side="calibration")
    out = s["root"] / "none"
    # No perplexity falls below zero: a bound of -100% excludes every plan.
    with pytest.raises(MoaError, match=r"no plan keeps perplexity within \+-100% of dense .*\(the lowest: tiny, "):
        validate_plans(s["model"], [s["plans"]["tiny"]], s["data"], out, tokenizer=s["tokenizer"],
                       guard_texts=texts, max_ppl_increase=-100)  # fmt: skip
    assert not (out / "plan.json").exists()
    with pytest.raises(MoaError, match="needs both its texts and its bound"):
        validate_plans(s["model"], [s["plans"]["tiny"]], s["data"], out, guard_texts=texts)


def test_cli_guard(setup: dict[str, Any], essays_dir: Path, tmp_path: Path) -> None:
    s = setup
    runner = CliRunner()
    base = ["validate", "--model", str(REFERENCE), "--plans", str(s["root"] / "plans"), "--data", str(s["data"])]
    result = runner.invoke(main, [*base, "--max-ppl-increase", "1e9", "--ppl-essays", str(essays_dir),
                                  "--ppl-samples", "2", "--out", str(tmp_path / "v"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["plan"] for r in rows} == {"dense", "half", "tiny"} and all(r["feasible"] for r in rows)
    assert "| plan | loss | ppl_increase | feasible |" in (tmp_path / "v" / "validation.md").read_text()
    # Two plans where the lower answer loss has the higher perplexity increase (the half window, on this model):
    # between their increases the guard picks the other, and the message names the plan that won.
    two = tmp_path / "two"
    two.mkdir()
    for name in ("half", "dense"):
        (two / f"{name}.json").write_bytes(s["plans"][name].read_bytes())
    by = {r["plan"]: r for r in rows}
    assert by["half"]["loss"] < by["dense"]["loss"] and by["half"]["ppl_increase"] > by["dense"]["ppl_increase"]
    bound = (by["half"]["ppl_increase"] + max(by["dense"]["ppl_increase"], 0.0)) / 2
    pair = [*base[:4], str(two), *base[5:]]
    text = runner.invoke(main, [*pair, "--max-ppl-increase", str(bound), "--ppl-essays", str(essays_dir),
                                "--ppl-samples", "2", "--out", str(tmp_path / "p")])  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "(from dense)" in text.output
    assert (tmp_path / "p" / "plan.json").read_bytes() == (two / "dense.json").read_bytes()
    # Bad input: one sentence and a non-zero exit.
    bad = runner.invoke(main, [*base, "--ppl-lengths", "256", "--out", str(tmp_path / "w")])
    assert bad.exit_code == 2 and "--ppl-essays and --ppl-lengths need --max-ppl-increase" in bad.output
    missing = runner.invoke(main, [*base, "--max-ppl-increase", "2", "--ppl-essays", str(tmp_path / "nothing"),
                                   "--out", str(tmp_path / "x")])  # fmt: skip
    assert missing.exit_code != 0 and "no essays (*.txt) in" in missing.output
    assert not (tmp_path / "x" / "plan.json").exists()
    # No feasible plan (the half window alone, its increase > dense's 0, under a bound of 0): the measurements are
    # printed and kept (validation.md), then one sentence; no plan.json.
    only = tmp_path / "only"
    only.mkdir()
    (only / "half.json").write_bytes(s["plans"]["half"].read_bytes())
    none = runner.invoke(main, [*base[:4], str(only), *base[5:], "--max-ppl-increase", "0", "--ppl-essays",
                                str(essays_dir), "--ppl-samples", "2", "--out", str(tmp_path / "n")])  # fmt: skip
    assert none.exit_code != 0 and "no plan keeps perplexity within +0% of dense" in none.output
    assert "| half |" in none.stdout and "| half |" in (tmp_path / "n" / "validation.md").read_text()
    assert "Traceback" not in none.output and not (tmp_path / "n" / "plan.json").exists()


def test_the_report_shows_the_chosen_plans_loss_not_the_lowest(tmp_path: Path) -> None:
    """With a guard the chosen plan need not have the lowest loss; the compress report shows the chosen one's."""
    from moa.bench.report import write_parquet
    from moa.pipeline import _validation_loss

    rows = [{"plan": "a", "loss": 0.1, "best": False, "feasible": False}, {"plan": "b", "loss": 0.2, "best": True}]
    write_parquet(rows, tmp_path / "validation.parquet")
    assert _validation_loss(tmp_path) == "0.200"
    write_parquet([{"plan": "a", "loss": 0.3}, {"plan": "b", "loss": 0.25}], tmp_path / "validation.parquet")
    assert _validation_loss(tmp_path) == "0.250"  # a table without `best`: the lowest
