"""``moa generate``: streams the same tokens as the library; bad input -> one sentence, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from moa_plan import ModelFingerprint, Plan
from moa_plan.cli import main
from moa_runtime import apply_plan
from moa_runtime.testing import make_model, make_tokenizer, mixed_plan

PROMPT = " ".join(f"w{3 + (11 * i) % 90}" for i in range(25))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama", kv_heads=2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plan_file(model_dir: Path) -> Path:
    fp = ModelFingerprint.from_model_path(model_dir)
    base = mixed_plan(make_model("llama", kv_heads=2))
    plan = Plan.from_arrays(fp, base.alphas, base.betas, sink=base.sink, block=base.block)
    return plan.save(model_dir.parent / "plan.json")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["generate", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_generate_streams_the_library_output(model_dir: Path, plan_file: Path) -> None:
    code, out = _run("--model", str(model_dir), "--plan", str(plan_file), "--prompt", PROMPT, "--max-new-tokens", "8")
    assert code == 0, out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    apply_plan(model, Plan.load(plan_file))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        seq = model.generate(ids, max_new_tokens=8, do_sample=False)
    expected = tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.strip() == expected.strip()
    assert len(out.split()) >= 1


def test_packed_linears_stream_the_same_tokens(
    model_dir: Path, plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moa_runtime import packed_linears_available

    args = ("--model", str(model_dir), "--plan", str(plan_file), "--prompt", PROMPT, "--max-new-tokens", "8")
    code, plain = _run(*args)
    assert code == 0, plain
    if packed_linears_available():
        code, packed = _run(*args, "--packed-linears")
        assert code == 0, packed
        assert packed == plain
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    line = _one_error(*_run(*args, "--packed-linears"))
    assert "no oneDNN" in line


def test_generate_from_file_with_chat(model_dir: Path, plan_file: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    code, out = _run("--model", str(model_dir), "--plan", str(plan_file), "--file", str(prompt), "--chat")
    assert code == 0, out
    assert out.strip()


def _one_error(code: int, out: str) -> str:
    assert code == 2, out
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("Error:")
    assert "Traceback" not in out
    return lines[0]


def test_bad_input_exits_2(model_dir: Path, plan_file: Path, tmp_path: Path) -> None:
    line = _one_error(*_run("--model", str(tmp_path / "nope"), "--plan", str(plan_file), "--prompt", "w5"))
    assert "not a directory" in line
    other = make_model("llama", kv_heads=2, layers=3)
    wrong = Plan.dense(ModelFingerprint.from_config(other.config)).save(tmp_path / "wrong.json")
    line = _one_error(*_run("--model", str(model_dir), "--plan", str(wrong), "--prompt", "w5"))
    assert "num_layers" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    line = _one_error(*_run("--model", str(model_dir), "--plan", str(plan_file), "--file", str(empty)))
    assert "empty" in line
    line = _one_error(*_run("--model", str(model_dir), "--plan", str(plan_file)))
    assert "--prompt" in line
    line = _one_error(*_run("--model", str(model_dir), "--plan", str(tmp_path / "missing.json"), "--prompt", "w5"))
    assert "missing.json" in line
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    line = _one_error(*_run("--model", str(pickled), "--plan", str(plan_file), "--prompt", "w5"))
    assert "safetensors" in line
