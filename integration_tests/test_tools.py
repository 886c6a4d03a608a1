"""The tools/ scripts a user runs by hand: bad input is one sentence and exit 2, before anything heavy starts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP = ROOT / "tools" / "llamacpp_reference.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LLAMACPP), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "4k"], "--lengths must be comma-separated integers, got '4k'."),
        (["--lengths", "0,4096"], "--lengths must be positive token counts, got '0,4096'."),
        (["--lengths", ","], "--lengths must be positive token counts, got ','."),
        (["--new-tokens", "2"], "--new-tokens must be at least 3 (the first two steps are warm-up), got 2."),
        (["--threads", "0"], "--threads must be at least 1, got 0."),
        (["--gguf", "/nonexistent/m.gguf"], "GGUF file not found: /nonexistent/m.gguf (run `make assets` first)."),
    ],
)
def test_llamacpp_reference_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = _run("--gguf", str(gguf), *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama_cpp is installed here")
def test_llamacpp_reference_outside_its_venv(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = _run("--gguf", str(gguf), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "run this script with the python of the venv that `--setup VENV` built" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


PROBE = ROOT / "tools" / "probe_plan.py"
PLAN_25 = ROOT / "plans" / "smollm2-135m-instruct" / "moa-gate64-1k2k-reference-0.25.json"


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60)


def test_probe_plan_fixes_one_slope_and_keeps_the_rest(tmp_path: Path) -> None:
    from moa_plan import Plan

    out = tmp_path / "probe.json"
    result = _probe(str(PLAN_25), "--beta", "0.125", "--tokens", "512", "--out", str(out))
    assert result.returncode == 0, result.stderr
    source, probe = Plan.load(PLAN_25), Plan.load(out)
    local = source.betas == 0.125
    assert local.sum() == 61  # the committed 25% plan's N/8 heads (RESULTS.md, twenty-eighth session)
    for n in (1024, 2048, 4096, 8192):
        # The probed heads hold 512 tokens at every length (N permitting); every other head keeps its span.
        assert (probe.spans(n)[local] == min(n, 512)).all()
        assert (probe.spans(n)[~local] == source.spans(n)[~local]).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "0.3", "--tokens", "512"], f"error: no rule of {PLAN_25} has slope 0.3"),
        (["--beta", "0.125", "--tokens", "0"], "error: --tokens must be a positive number of tokens, got 0"),
    ],
)
def test_probe_plan_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    result = _probe(str(PLAN_25), *args, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not out.exists()


def test_probe_plan_missing_plan_and_unwritable_out(tmp_path: Path) -> None:
    missing = _probe(str(tmp_path / "none.json"), "--beta", "0.125", "--tokens", "8", "--out", str(tmp_path / "p.json"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read plan ")
    assert len(missing.stderr.strip().splitlines()) == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = _probe(str(PLAN_25), "--beta", "0.125", "--tokens", "8", "--out", str(blocked / "p.json"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: cannot write {blocked / 'p.json'}")
    assert len(result.stderr.strip().splitlines()) == 1


TOPK = ROOT / "tools" / "gate_topk_plan.py"
GATES_1K = ROOT / "plans" / "smollm2-135m-instruct" / "gates-64-reference-1024.json"
GATES_2K = ROOT / "plans" / "smollm2-135m-instruct" / "gates-64-reference-2048.json"


def _topk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOPK), *args], capture_output=True, text=True, timeout=60)


def _values(path: Path) -> dict[tuple[int, int], float]:
    import json

    return {(int(layer), int(head)): float(v) for layer, head, v in json.loads(path.read_text())["values"]}


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_gate_topk_plan_keeps_the_dearest_heads_whole(combine: str, tmp_path: Path) -> None:
    from moa_plan import Plan

    out = tmp_path / "top.json"
    result = _topk(
        str(GATES_1K), str(GATES_2K), "--whole", "12", "--combine", combine, "--like", str(PLAN_25), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    a, b = _values(GATES_1K), _values(GATES_2K)
    top_a, top_b = max(a.values()), max(b.values())
    # The oracle: every head's combined value, written out here, and the twelve largest of them.
    combined = {h: a[h] + b[h] if combine == "sum" else max(a[h] / top_a, b[h] / top_b) for h in a}
    dearest = set(sorted(combined, key=lambda h: -combined[h])[:12])
    plan = Plan.load(out)
    whole = {(int(layer), int(head)) for layer, head in zip(*(plan.betas == 1.0).nonzero(), strict=True)}
    assert whole == dearest
    assert (plan.alphas == 0).all() and ((plan.betas == 1.0) | (plan.betas == 0.125)).all()
    for n in (1024, 2048, 4096):
        # 12 heads keep N tokens, 78 keep N/8 (block-aligned at these N): density counted by hand.
        assert plan.density(n) == pytest.approx((12 * n + 78 * n // 8) / (90 * n))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--whole", "91"], "error: --whole must lie in 0..90 (the model's KV heads), got 91"),
        (["--whole", "4", "--local-beta", "1"], "error: --local-beta must lie strictly between 0 and 1, got 1"),
    ],
)
def test_gate_topk_plan_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "top.json"
    result = _topk(str(GATES_1K), *args, "--like", str(PLAN_25), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not out.exists()


def test_gate_topk_plan_bad_files(tmp_path: Path) -> None:
    import json

    out = tmp_path / "top.json"
    not_json = tmp_path / "g.json"
    not_json.write_text("{")
    no_values = tmp_path / "h.json"
    no_values.write_text('{"gates": []}')
    short = tmp_path / "s.json"  # the committed gates with the last KV head's value dropped
    record = json.loads(GATES_1K.read_text())
    short.write_text(json.dumps({**record, "values": record["values"][:-1]}))
    cases = {
        str(tmp_path / "none.json"): f"error: cannot read the gates {tmp_path / 'none.json'}: ",
        str(not_json): f"error: {not_json} is not a gates record",
        str(no_values): f"error: {no_values} is not a gates record",
        str(short): f"error: {short} has no value for KV head (29, 2)",
    }
    for gates, start in cases.items():
        result = _topk(gates, "--whole", "4", "--like", str(PLAN_25), "--out", str(out))
        assert result.returncode == 2 and result.stderr.startswith(start), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    missing = _topk(str(GATES_1K), "--whole", "4", "--like", str(tmp_path / "p.json"), "--out", str(out))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read plan ")
    assert not out.exists()


ORACLE = ROOT / "tools" / "oracle_gates.py"


def test_oracle_gates_bad_arguments(tmp_path: Path) -> None:
    def oracle(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ORACLE), *args], capture_output=True, text=True, timeout=120)

    out = tmp_path / "o.json"
    cases = {
        ("--length", "100", "--out", str(out)): "error: --length must be at least 256 tokens, got 100",
        (
            "--length",
            "1024",
            "--steps",
            "0",
            "--out",
            str(out),
        ): "error: --samples and --steps must be positive, got 10 and 0",
        (
            "--length",
            "1024",
            "--out",
            str(tmp_path / "no" / "o.json"),
        ): f"error: the folder of --out does not exist: {tmp_path / 'no'}",
    }
    for args, message in cases.items():
        result = oracle(*args)
        assert result.returncode == 2 and result.stderr.strip() == message, result.stderr
    missing = oracle("--model", str(tmp_path / "none"), "--length", "1024", "--out", str(out))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and str(tmp_path / "none") in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not out.exists()
