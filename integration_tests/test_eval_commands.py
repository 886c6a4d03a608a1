"""``moa eval task`` on a records file and ``moa eval ppl --out``, through the installed command."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from moa_plan import Record, write_records
from moa_plan.tasks import generate, score


def _records(tmp_path: Path, model: Path, n: int = 10) -> tuple[Path, list[Record]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    records = generate(
        "lines",
        n,
        target_length=400,
        seed=3,
        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False).input_ids),
    )
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    return path, records


def test_task_eval_scores_answers_against_references(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    path, records = _records(tmp_path, reference_model)
    out = tmp_path / "out"
    proc = moa_cli("eval", "task", "--model", reference_model, "--records", path, "--plan", "dense",
                   "--plan", "uniform:0.25", "--max-new-tokens", "8", "--out", out, "--json")  # fmt: skip
    summary = {row["plan"]: row for row in json.loads(proc.stdout)}
    answers = pl.read_parquet(out / "answers.parquet")
    assert answers.height == 2 * len(records)
    for row in answers.iter_rows(named=True):
        record = records[row["index"]]
        # Oracle: the task package's own scorer, and plain substring / equality on the stored text.
        assert row["reference"] == record.answer
        assert row["exact"] == score(record, row["answer"])
        assert row["contains"] == float(record.answer in row["answer"])
        assert 0.0 <= row["f1"] <= 1.0 and (row["f1"] == 1.0) >= (row["exact"] == 1.0)
    for plan in ("dense", "uniform-0.25"):
        rows = answers.filter(pl.col("plan") == plan)
        assert summary[plan]["exact"] == pytest.approx(rows["exact"].mean())
        assert summary[plan]["records"] == len(records)
    assert summary["dense"]["kv_density"] == 1.0
    assert summary["uniform-0.25"]["kv_density"] < 0.5
    if reference_model.name == "moa-reference":
        # The committed model answers lines retrieval at 400 tokens; a quarter window cannot.
        assert summary["dense"]["exact"] >= 0.9
        assert summary["uniform-0.25"]["exact"] < summary["dense"]["exact"]
    assert "| task | plan | exact |" in (out / "task.md").read_text()


def test_task_eval_bad_records(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "noanswer.jsonl"
    write_records(path, [Record(task="qa", context="some words here", question="which")])
    proc = moa_cli("eval", "task", "--model", reference_model, "--records", path, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "Error: record 1 (qa) has no reference answer to score against"
    assert not (tmp_path / "o").exists()


def test_ppl_writes_tables(reference_model: Path, tmp_path: Path, moa_cli) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "calib.parquet"
    moa_cli("calibrate", "--model", reference_model, "--task", "rewrite", "--lengths", "256", "--num-samples", "2",
            "--out", data, "--quiet")  # fmt: skip
    proc = moa_cli("eval", "ppl", "--model", reference_model, "--data", data, "--plan", "dense", "--plan",
                   "uniform:0.5", "--out", tmp_path / "ppl", "--json")  # fmt: skip
    rows = json.loads(proc.stdout)
    table = pl.read_parquet(tmp_path / "ppl" / "ppl.parquet")
    assert table["plan"].to_list() == ["dense", "uniform-0.5"]
    assert table["loss"].to_list() == pytest.approx([r["loss"] for r in rows])
    assert "| plan | loss | ppl | samples |" in (tmp_path / "ppl" / "ppl.md").read_text()
