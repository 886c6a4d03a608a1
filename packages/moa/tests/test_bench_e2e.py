"""The end-to-end benchmark's decode loop, caches and batch search, against independent oracles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from moa.bench import e2e
from moa.bench.e2e import Case, find_max_batch, run_case
from moa_plan import ModelFingerprint, Plan
from moa_plan.cli import main

LENGTH, NEW = 300, 8
# A plan of another model (SmolLM2's, committed under plans/): the bench model must reject it up front.
SMOLLM2_PLAN = Path(__file__).resolve().parents[3] / "plans" / "smollm2-135m-instruct" / "moa-measured-shaped-0.5.json"


def _generate_oracle(rows: int = 1) -> list[int]:
    """Row 0's greedy tokens from plain ``model.generate`` (dynamic cache, one-pass prefill)."""
    case = Case(model="bench", method="dense", length=LENGTH, batch=rows)
    model, config = e2e._load_model(case)
    ids = torch.randint(3, config.vocab_size, (rows, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
    return [int(t) for t in out[0, LENGTH:]]


@pytest.fixture(scope="module")
def oracle() -> list[int]:
    return _generate_oracle()


@pytest.mark.parametrize(
    ("method", "chunk", "rows", "batch"),
    [("dense", None, None, 1), ("dense-static", None, 1, 3), ("dense-static", 128, None, 2), ("dense", 100, 1, 2)],
)
def test_dense_baselines_decode_what_generate_decodes(
    oracle: list[int], method: str, chunk: int | None, rows: int | None, batch: int
) -> None:
    case = Case(
        model="bench",
        method=method,
        length=LENGTH,
        batch=batch,
        new_tokens=NEW,
        warmup_tokens=2,
        prefill_chunk_size=chunk,
        prefill_rows=rows,
    )
    result = run_case(case, bandwidth=1e10)
    assert result["tokens"] == oracle
    # A dense cache holds every token: exactly layers x KV heads x N x 2 x head_dim x 4 bytes x batch.
    n = LENGTH + NEW
    assert result["kv_bytes"] == 4 * 2 * n * 2 * 64 * 4 * batch
    assert result["kv_density"] == 1.0


@pytest.mark.parametrize("linear", ["left", "packed"])
@pytest.mark.parametrize("method", ["dense-static", "moa"])
def test_the_other_linears_decode_what_generate_decodes(
    oracle: list[int], method: str, linear: str, tmp_path: Any
) -> None:
    # --linear left/packed changes only how the weight products are laid out: a dense model, and a dense plan through
    # the MoA cache, still decode plain generate's tokens.
    plan = None
    if method == "moa":
        fp = ModelFingerprint.from_config(e2e._load_model(Case(model="bench", method="dense", length=1, batch=1))[1])
        plan = str(Plan.dense(fp, sink=4, block=4).save(tmp_path / "dense.json"))
    case = Case(
        model="bench",
        method=method,
        plan=plan,
        length=LENGTH,
        batch=2,
        new_tokens=NEW,
        warmup_tokens=2,
        prefill_rows=1,
        linear=linear,
    )
    result = run_case(case, bandwidth=1e10)
    assert result["linear"] == linear
    assert result["tokens"] == oracle


def test_an_unknown_linear_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown linear 'right'"):
        run_case(Case(model="bench", method="dense", length=8, batch=1, linear="right"), bandwidth=1e10)


def test_a_dense_plan_through_the_moa_cache_decodes_what_generate_decodes(oracle: list[int], tmp_path: Any) -> None:
    fp = ModelFingerprint.from_config(e2e._load_model(Case(model="bench", method="dense", length=1, batch=1))[1])
    path = tmp_path / "dense.json"
    Plan.dense(fp, sink=4, block=4).save(path)
    case = Case(
        model="bench",
        method="moa",
        plan=str(path),
        length=LENGTH,
        batch=2,
        new_tokens=NEW,
        warmup_tokens=2,
        prefill_rows=1,
        prefill_chunk_size=128,
    )
    result = run_case(case, bandwidth=1e10)
    assert result["tokens"] == oracle


def test_kv_bytes_of_a_plan_match_the_sum_of_its_spans() -> None:
    case = Case(model="bench", method="moa", density=0.25, length=LENGTH, batch=4, new_tokens=NEW, prefill_rows=2)
    result = run_case(case, bandwidth=1e10)
    fp = ModelFingerprint.from_config(e2e._load_model(case)[1])
    spans = e2e.bench_plan(fp, "moa", 0.25).spans(LENGTH + NEW)
    assert result["kv_formula_bytes"] == int(spans.sum()) * 2 * 64 * 4 * 4
    # The cache holds the spans plus a few bookkeeping integers: within 1%.
    assert 1.0 <= result["kv_vs_formula"] <= 1.01
    assert result["kv_density"] == pytest.approx(spans.sum() / (4 * 2 * (LENGTH + NEW)))


def test_max_batch_is_the_largest_measured_batch_under_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
        calls.append(case.batch)
        # Peak grows with the batch, slightly faster than the line through batches 1 and 2 predicts.
        peak = 1000 + 70 * case.batch + 2 * case.batch**2
        return {"method": case.method, "batch": case.batch, "peak_rss_bytes": peak, "decode_tok_s": float(case.batch)}

    monkeypatch.setattr(e2e, "_run_in_subprocess", fake)
    limit = 3000
    row = find_max_batch(Case(model="bench", method="dense-static", length=8, batch=1), limit, bandwidth=1.0)
    brute = max(b for b in range(1, 200) if 1000 + 70 * b + 2 * b * b <= limit)
    assert row["batch"] == brute
    assert row["batch"] + 1 in calls  # the verdict "the next batch does not fit" was measured
    assert len(calls) == len(set(calls)) <= 8

    # Small batches hide the slope (their peak is one row's prefill), and large ones fail outright (the
    # machine's memory): the search must bisect from the failure, not step down one batch at a time.
    calls.clear()

    def flat_then_failing(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
        calls.append(case.batch)
        if case.batch > 150:
            return {"method": case.method, "batch": case.batch, "error": "out of memory"}
        peak = max(2000 + case.batch, 1000 + 20 * case.batch)
        return {"method": case.method, "batch": case.batch, "peak_rss_bytes": peak, "decode_tok_s": 1.0}

    monkeypatch.setattr(e2e, "_run_in_subprocess", flat_then_failing)
    row = find_max_batch(Case(model="bench", method="moa", length=8, batch=1), limit, bandwidth=1.0)
    assert row["batch"] == max(b for b in range(1, 151) if max(2000 + b, 1000 + 20 * b) <= limit) == 100
    assert 101 in calls
    assert len(calls) == len(set(calls)) <= 16

    def too_big(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
        return {"method": case.method, "batch": case.batch, "peak_rss_bytes": 10**9}

    monkeypatch.setattr(e2e, "_run_in_subprocess", too_big)
    row = find_max_batch(Case(model="bench", method="dense", length=8, batch=1), limit, bandwidth=1.0)
    assert "exceeds" in row["error"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "dense,flash"], "unknown method 'flash'"),
        (["--plan", "nope.json"], "plan file not found"),
        (["--plan", str(SMOLLM2_PLAN)], "plan does not fit the model"),
        (["--prefill-rows", "3", "--batches", "4"], "must divide every batch"),
    ],
)
def test_e2e_rejects_bad_input_in_one_sentence(args: list[str], needle: str, tmp_path: Any) -> None:
    result = CliRunner().invoke(main, ["bench", "e2e", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_e2e_writes_a_table_with_ratios_against_the_static_cache(tmp_path: Any) -> None:
    args = [
        "bench",
        "e2e",
        "--lengths",
        "64",
        "--batches",
        "2",
        "--methods",
        "dense,dense-static,uniform",
        "--densities",
        "0.5",
        "--new-tokens",
        "8",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "e2e.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["dense", "dense-static", "uniform-0.5"]
    static = rows[1]
    assert static["decode_speedup"] == 1.0
    assert rows[0]["decode_speedup"] == pytest.approx(rows[0]["decode_tok_s"] / static["decode_tok_s"])
    assert "decode_speedup" in (tmp_path / "e2e.md").read_text()


def test_rounds_run_round_robin_and_report_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds: cases interleaved (a slow spell hits every method), medians per case, ratios from the medians."""
    order: list[str] = []
    speeds = {"dense-static": iter([10.0, 4.0, 11.0]), "uniform": iter([20.0, 21.0, 8.0])}

    def fake(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
        order.append(case.method)
        if case.method == "uniform" and len(order) == 4:
            return {"method": case.method, "label": case.label, "error": "killed"}
        tok = next(speeds[case.method])
        return {
            "model": case.model,
            "method": case.method,
            "length": case.length,
            "batch": case.batch,
            "label": case.label,
            "decode_tok_s": tok,
            "prefill_s": 100.0 / tok,
            "floor_tok_s": 40.0,
            "kv_formula_bytes": 1,
            "peak_rss_bytes": int(tok),
        }

    monkeypatch.setattr(e2e, "_run_in_subprocess", fake)
    cases = [Case(model="bench", method=m, length=8, batch=2, density=0.5) for m in ("dense-static", "uniform")]
    static, uniform = e2e.run_e2e(cases, bandwidth=1.0, rounds=3)
    assert order == ["dense-static", "uniform"] * 3
    assert static["decode_tok_s"] == 10.0 and static["decode_tok_s_runs"] == [10.0, 4.0, 11.0]
    assert static["prefill_s"] == 10.0 and static["peak_rss_bytes"] == 11 and static["rounds"] == 3
    assert uniform["rounds"] == 2 and uniform["decode_tok_s"] == pytest.approx(20.5)  # the failed run is left out
    assert uniform["decode_speedup"] == pytest.approx(2.05)
    assert static["decode_spread"] == pytest.approx(0.7)
