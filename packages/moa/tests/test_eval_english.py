"""``moa eval`` on the English tasks: prompt forms, rows, reports and the CLI, on the reference model."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from moa import evaluate
from moa.evaluate import PlanSpec, effective_context_table, retrieval_eval
from moa.report import retrieval_outputs
from moa_plan.cli import main
from moa_plan.tasks import completion_prompt, essay_ppl_texts, generate, to_messages, vocabulary

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "models" / "moa-reference"
needs_reference = pytest.mark.skipif(not (REFERENCE / "config.json").is_file(), reason="no reference model")


def _essays() -> dict[str, str]:
    """Essays in the reference vocabulary (filler words, '.' as a word), 24 of them."""
    filler = vocabulary().filler
    rng = np.random.default_rng(0)
    out = {}
    for n in range(24):
        sentences = [" ".join(filler[int(w)] for w in rng.integers(0, len(filler), 9)) + " ." for _ in range(60)]
        out[f"essay{n:02d}"] = " ".join(sentences)
    return out


@pytest.fixture(scope="module")
def essays_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("essays")
    for name, text in _essays().items():
        (path / f"{name}.txt").write_text(text)
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REFERENCE, local_files_only=True)


@needs_reference
@pytest.mark.parametrize("form", ["completion", "chat"])
def test_prompts_by_form(form: str, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion: plain text with the tokenizer's own special tokens; chat: the template. Toy tasks stay chat."""
    seen: list[tuple[list[str], int, bool]] = []

    def fake_greedy(model: Any, tok: Any, prompts: list[str], new: int, batch: int, add_special_tokens: bool = False):  # type: ignore[no-untyped-def]
        seen.append((prompts, new, add_special_tokens))
        # Even records answer right, odd ones wrong.
        return ["eat a sandwich in Dolores Park" if i % 2 == 0 else "no idea" for i in range(len(prompts))]

    monkeypatch.setattr(evaluate, "_greedy", fake_greedy)
    rows = retrieval_eval(
        None, tokenizer, [PlanSpec("dense", None)], tasks=["niah", "lines"], lengths=[200], samples=10,
        seed=3, form=form, essays=_essays(),
    )  # fmt: skip

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    overhead = 0 if form == "completion" else evaluate._chat_overhead(tokenizer)
    records = generate("niah", 10, target_length=200, count_tokens=count, seed=3, overhead=overhead, form=form,
                       essays=_essays())  # fmt: skip
    (niah_prompts, niah_new, niah_special), (lines_prompts, lines_new, lines_special) = seen
    if form == "completion":
        assert niah_prompts == [completion_prompt(r) for r in records] and niah_special
        assert niah_prompts[0].endswith("Answer: The best thing to do in San Francisco is")
    else:
        assert niah_prompts == [
            tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False) for r in records
        ]
        assert not niah_special
    assert niah_new == 16 and lines_new == 6
    assert lines_prompts[0].startswith("<s><|user|>") and not lines_special
    niah_rows = [r for r in rows if r["task"] == "niah"]
    assert [r["decile"] for r in niah_rows] == list(range(10))
    assert [r["depth_percent"] for r in niah_rows] == pytest.approx([d / 9 * 100 for d in range(10)])
    assert [r["correct"] for r in niah_rows] == [1, 0] * 5 and {r["form"] for r in niah_rows} == {form}
    assert {r["form"] for r in rows if r["task"] == "lines"} == {"chat"}
    assert [r["depth_percent"] for r in rows if r["task"] == "lines"] == [10 * d + 5 for d in range(10)]


def test_effective_context_table() -> None:
    def row(plan: str, task: str, length: int, correct: int, span: float) -> dict[str, Any]:
        return {"plan": plan, "task": task, "length": length, "correct": correct, "total": 10, "mean_span": span,
                "kv_density": span / length}  # fmt: skip

    rows = [
        row("u", "niah", 512, 10, 256), row("u", "niah", 1024, 10, 512), row("u", "niah", 2048, 5, 1024),
        row("u", "passkey-en", 512, 10, 256), row("u", "passkey-en", 1024, 8, 512), row("u", "passkey-en", 2048, 2, 1024),
    ]  # fmt: skip
    table = {(r["plan"], r["task"]): r for r in effective_context_table(rows)}
    assert table["u", "niah"]["effective_length"] == 1024 and table["u", "niah"]["mean_span"] == 512
    assert table["u", "passkey-en"]["effective_length"] == 512
    # All tasks: 18/20 at 1024 (>= 90%) although passkey-en alone is 8/10 there; 7/20 at 2048.
    assert table["u", "all"]["effective_length"] == 1024
    none = effective_context_table([row("v", "niah", 512, 1, 256)])
    assert none == [{"plan": "v", "task": "niah", "effective_length": None, "mean_span": None, "kv_density": None},
                    {"plan": "v", "task": "all", "effective_length": None, "mean_span": None, "kv_density": None}]  # fmt: skip


def _invoke(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@needs_reference
def test_cli_retrieval_english_end_to_end(essays_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = _invoke("eval", "retrieval", "--model", REFERENCE, "--tasks", "niah,passkey-en", "--lengths", "160,256",
                     "--samples", "10", "--plan", "dense", "--plan", "uniform:0.5", "--essays", essays_dir,
                     "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert {(r["task"], r["form"]) for r in rows} == {("niah", "completion"), ("passkey-en", "completion")}
    assert len(rows) == 2 * 2 * 2 * 10
    text = (out / "retrieval.md").read_text()
    assert "Effective context length" in text and "| plan | task | effective_length | mean_span | kv_density |" in text
    for task in ("niah", "passkey-en"):
        for plan in ("dense", "uniform-0.5"):
            assert (out / f"retrieval-{task}-{plan}.png").stat().st_size > 1000
            assert f"| {plan} | {task} |" in text
        assert "| uniform-0.5 | all |" in text
    # The same command again reads every cell back from OUT/retrieval.cells.json: the same rows, nothing measured.
    again = _invoke("eval", "retrieval", "--model", REFERENCE, "--tasks", "niah,passkey-en", "--lengths", "160,256",
                    "--samples", "10", "--plan", "dense", "--plan", "uniform:0.5", "--essays", essays_dir,
                    "--out", out, "--json")  # fmt: skip
    assert again.exit_code == 0 and json.loads(again.stdout)["rows"] == rows
    assert again.stderr.count("read back from") == 8


def _shard_common(essays_dir: Path) -> list[object]:
    return ["eval", "retrieval", "--model", REFERENCE, "--tasks", "niah", "--lengths", "160,256", "--samples", "5",
            "--plan", "dense", "--plan", "uniform:0.5", "--plan", "window:64", "--essays", essays_dir]  # fmt: skip


def _rows_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["plan"], r["length"], r["decile"])


@needs_reference
def test_cli_retrieval_shards_share_one_run(essays_dir: Path, tmp_path: Path) -> None:
    """Two `--shard` processes at once measure disjoint cells; the run without --shard reads them back: the rows of one run."""
    import subprocess
    import sys

    common = _shard_common(essays_dir)
    oracle = _invoke(*common, "--out", tmp_path / "whole", "--json")
    assert oracle.exit_code == 0, oracle.output
    whole = json.loads(oracle.stdout)["rows"]
    out = tmp_path / "sharded"
    code = "import sys; from moa_plan.cli import main; sys.exit(main())"
    args = [sys.executable, "-c", code, *map(str, common), "--out", str(out), "--json", "--shard"]
    procs = [
        subprocess.Popen([*args, f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)
    ]
    measured: list[set[tuple[str, int]]] = []
    for k, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        measured.append({(r["plan"], r["length"]) for r in json.loads(stdout)["rows"]})
        assert (out / f"retrieval.cells.shard-{k}-of-2.json").is_file() or not measured[k]
    assert not (out / "retrieval.md").exists()
    assert measured[0].isdisjoint(measured[1]) and len(measured[0] | measured[1]) == 6
    merged = _invoke(*common, "--out", out, "--json")
    assert merged.exit_code == 0, merged.output
    assert merged.stderr.count("read back from") == 6
    assert sorted(json.loads(merged.stdout)["rows"], key=_rows_key) == sorted(whole, key=_rows_key)
    assert (out / "retrieval.md").is_file()
    assert len(json.loads((out / "retrieval.cells.json").read_text())["cells"]) == 6


@needs_reference
def test_cli_retrieval_shard_takes_every_unclaimed_cell_longest_first(essays_dir: Path, tmp_path: Path) -> None:
    """Shares are not fixed in advance: a shard alone takes every cell, the longest prompts first; the next has none."""
    common, out = _shard_common(essays_dir), tmp_path / "out"
    first = _invoke(*common, "--out", out, "--shard", "0/2", "--json")
    assert first.exit_code == 0, first.output
    order = [line.split()[2] for line in first.stderr.splitlines() if " N=" in line]
    assert order == ["N=256"] * 3 + ["N=160"] * 3
    second = _invoke(*common, "--out", out, "--shard", "1/2", "--json")
    assert second.exit_code == 0 and json.loads(second.stdout)["rows"] == []
    assert len(json.loads((out / "retrieval.cells.shard-0-of-2.json").read_text())["cells"]) == 6


def test_cell_claims_one_owner_and_takeover_of_a_dead_claim(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    a, b = evaluate.CellClaims(tmp_path), evaluate.CellClaims(tmp_path)
    b.me = f"{socket.gethostname()} {os.getppid()}"  # another process on this host, alive
    assert a.claim("x") and not b.claim("x")
    a.done("x")
    assert not b.claim("x")
    # A claim left running by a process that has exited is taken over; one held by a live process is not.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    a.me = f"{socket.gethostname()} {int(dead.stdout)}"
    assert a.claim("y")
    assert b.claim("y") and not a.claim("y")
    # A claim from another host cannot be checked, so it is left alone.
    a.me = f"elsewhere-{socket.gethostname()} 1"
    assert a.claim("z") and not b.claim("z")


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1/0", "half", "1/2/3"])
def test_cli_retrieval_rejects_a_shard_that_does_not_exist(shard: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "retrieval", "--model", str(tmp_path / "none"), "--tasks", "lines",
                                       "--out", str(tmp_path / "out"), "--shard", shard])  # fmt: skip
    assert result.exit_code == 2 and "--shard" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@needs_reference
def test_cli_ppl_essays_matches_a_direct_forward(essays_dir: Path, tmp_path: Path, tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    result = _invoke("eval", "ppl", "--model", REFERENCE, "--essays", essays_dir, "--lengths", "128,300",
                     "--samples", "2", "--seed", "7", "--plan", "dense", "--plan", "uniform:0.5",
                     "--out", tmp_path / "ppl", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {(r["plan"], r["length"]): r for r in json.loads(result.stdout)}
    assert set(rows) == {(p, n) for p in ("dense", "uniform-0.5") for n in (128, 300)}
    assert "| plan | length | loss | ppl | samples | tokens | kv_density |" in (tmp_path / "ppl" / "ppl.md").read_text()

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    # Oracle: the dense loss from the full logits of a plain forward over the same texts.
    model = AutoModelForCausalLM.from_pretrained(REFERENCE, local_files_only=True).eval()
    for n in (128, 300):
        total, tokens = 0.0, 0
        for text in essay_ppl_texts(2, n, count, 7, essays=_essays()):
            ids = tokenizer(text, return_tensors="pt").input_ids
            assert n - 10 <= ids.shape[1] <= n
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            tokens += ids.shape[1] - 1
        assert rows["dense", n]["loss"] == pytest.approx(total / tokens, rel=1e-4)
        assert rows["dense", n]["kv_density"] == 1.0
    assert rows["uniform-0.5", 300]["kv_density"] < 0.7
    # --side calibration: the same forward over calibration essays (validation text), not the evaluation ones.
    side = _invoke("eval", "ppl", "--model", REFERENCE, "--essays", essays_dir, "--lengths", "300", "--samples", "2",
                   "--seed", "7", "--side", "calibration", "--json")  # fmt: skip
    assert side.exit_code == 0, side.output
    (row,) = json.loads(side.stdout)
    total, tokens = 0.0, 0
    for text in essay_ppl_texts(2, 300, count, 7, essays=_essays(), side="calibration"):
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
    assert row["loss"] == pytest.approx(total / tokens, rel=1e-4) and row["loss"] != rows["dense", 300]["loss"]
    # At 128 tokens a half window is the sink + one block: the whole text, the same loss.
    assert rows["uniform-0.5", 128]["loss"] == pytest.approx(rows["dense", 128]["loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retrieval", "--form", "prose", "--tasks", "niah"], "Invalid value for '--form'"),
        (["retrieval", "--tasks", "niah,bogus"], "unknown task 'bogus'"),
        (
            ["retrieval", "--tasks", "niah", "--essays", "/nonexistent/essays"],
            "no essays (*.txt) in /nonexistent/essays",
        ),
        (["ppl"], "give exactly one of --data PARQUET and --essays [DIR]"),
        (["ppl", "--essays", "/nonexistent/essays"], "no essays (*.txt) in /nonexistent/essays"),
    ],
)
def test_cli_bad_input_exits_2_with_one_sentence(args: list[str], message: str, tmp_path: Path) -> None:
    # The model path is never reached: bad input fails before anything loads.
    result = _invoke("eval", *args, "--model", tmp_path / "no-model", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_missing_essay_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "cache"))
    result = _invoke("eval", "retrieval", "--model", tmp_path / "m", "--tasks", "niah", "--out", tmp_path / "o")
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("Error: the Paul Graham essays are not in ") and line.endswith("first")


def test_retrieval_report_for_english_rows(tmp_path: Path) -> None:
    rows = [
        {"plan": "dense", "task": "niah-multi", "form": "completion", "length": n, "decile": d,
         "depth_percent": d / 9 * 100, "correct": int(d < 5), "total": 1, "accuracy": float(d < 5),
         "score": 1.0 if d < 5 else 1 / 3, "kv_density": 1.0, "mean_span": float(n)}
        for n in (512, 1024) for d in range(10)
    ]  # fmt: skip
    table = retrieval_outputs(rows, tmp_path)
    assert "| task | length | plan | accuracy | score |" in table
    assert "| niah-multi | 512 | dense | 0.500 | 0.667 |" in table
    assert (tmp_path / "retrieval-niah-multi-dense.png").is_file()


@needs_reference
def test_fewer_than_ten_samples_spread_over_the_depths(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 samples per cell are records 1, 3, 5, 7, 9 of the ten (depths 11-100%), not the first half of the context."""
    monkeypatch.setattr(evaluate, "_greedy", lambda model, tok, prompts, *a, **k: ["no idea"] * len(prompts))
    rows = retrieval_eval(
        None, tokenizer, [PlanSpec("dense", None)], tasks=["niah", "passkey-en", "lines"], lengths=[200], samples=5,
        seed=3, essays=_essays(),
    )  # fmt: skip
    for task in ("niah", "passkey-en", "lines"):
        assert [r["decile"] for r in rows if r["task"] == task] == [1, 3, 5, 7, 9]
    assert evaluate.spread_records(1) == [5] and evaluate.spread_records(12) == list(range(12))


@needs_reference
def test_an_interrupted_run_resumes_from_its_cells(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells finished before a crash are read back, not measured again; other settings or changed rules re-measure."""
    from moa_plan import ModelFingerprint, Plan

    fingerprint = ModelFingerprint.from_config(json.loads((REFERENCE / "config.json").read_text()))
    plans = [PlanSpec("dense", None), PlanSpec("u", Plan.uniform(fingerprint, 0.5, sink=4, block=4))]
    calls: list[str] = []

    def fake_greedy(model: Any, tok: Any, prompts: list[str], *a: Any, **k: Any) -> list[str]:
        calls.append("call")
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("killed")
        # Call c answers the first c records right: every cell differs, so a mixed-up read-back shows.
        return ["eat a sandwich in Dolores Park" if i < len(calls) else "no" for i in range(len(prompts))]

    monkeypatch.setattr(evaluate, "_greedy", fake_greedy)
    monkeypatch.setattr(evaluate, "using_plan", lambda model, plan: contextlib.nullcontext())
    settings = {"samples": 10, "seed": 3}

    def run(store: evaluate.CellStore, specs: list[PlanSpec] = plans) -> list[dict[str, Any]]:
        return retrieval_eval(None, tokenizer, specs, tasks=["niah"], lengths=[200, 256], samples=10, seed=3,
                              essays=_essays(), store=store)  # fmt: skip

    fail_after: int | None = None
    whole = run(evaluate.CellStore(tmp_path / "whole.json", settings))
    assert len(calls) == 4
    calls.clear()
    fail_after = 3
    with pytest.raises(RuntimeError, match="killed"):
        run(evaluate.CellStore(tmp_path / "cells.json", settings))
    assert len(json.loads((tmp_path / "cells.json").read_text())["cells"]) == 3
    calls.clear()
    fail_after = None
    # The three stored cells come back as they were measured; only the fourth runs (as call 1: 1 right).
    resumed = run(evaluate.CellStore(tmp_path / "cells.json", settings))
    assert len(calls) == 1
    assert resumed[:30] == whole[:30]
    assert [r["correct"] for r in resumed[30:]] == [1] + [0] * 9
    calls.clear()
    run(evaluate.CellStore(tmp_path / "cells.json", settings))
    assert calls == []
    # Other settings: nothing is read back. Same name, other rules: that plan is measured again.
    run(evaluate.CellStore(tmp_path / "cells.json", {**settings, "seed": 4}))
    assert len(calls) == 4
    calls.clear()
    other = [plans[0], PlanSpec("u", Plan.uniform(fingerprint, 0.25, sink=4, block=4))]
    run(evaluate.CellStore(tmp_path / "whole.json", settings), other)
    assert len(calls) == 2
