"""End-to-end benchmark: dense Hugging Face vs uniform and MoA plans at equal KV density.

Each case (model, method, length, batch, density) runs in a fresh subprocess, so its peak
memory is its own: the prompt is prefilled once (timed), then decode steps are timed one by one
through a streamer and the median step gives tokens/s. Beside each decode figure stands the
physical floor: bytes that must be read per step (weights + kept KV) over the copy bandwidth
measured in the same run.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BENCH_MODEL", "Case", "bench_plan", "run_case", "run_e2e"]

# Small weights, long context: a Llama-style config where reading the KV cache dominates decode,
# and 16k tokens x batch 4 fit in 24 GiB (dense KV at 16k x 4 = 134 MB in fp32).
BENCH_MODEL: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 2048,
    "max_position_embeddings": 32768,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True, kw_only=True)
class Case:
    """One benchmark cell."""

    model: str  # "bench", a model directory or a .gguf file
    method: str  # "dense", "uniform" or "moa"
    length: int
    batch: int
    density: float = 1.0
    new_tokens: int = 24
    warmup_tokens: int = 4
    plan: str | None = None  # a MoA plan file for a real model
    threads: int = 1
    # generate(prefill_chunk_size=...); None: the method's default (dense: one pass; MoA and uniform:
    # apply_plan's prefill_chunk, 4096 tokens).
    prefill_chunk_size: int | None = None


def bench_plan(fingerprint: Any, method: str, density: float) -> Any:
    """The plan a case runs: uniform ``(0, density)``, or a heterogeneous one of equal mean density.

    The heterogeneous plan gives half of each layer's KV heads ``beta = density / 2`` and the other
    half ``3 density / 2`` (capped at 1), so its spans are ragged but its mean density matches.
    """
    import numpy as np

    from moa_plan import Plan

    if method == "uniform":
        return Plan.uniform(fingerprint, density)
    layers, heads = fingerprint.num_layers, fingerprint.num_key_value_heads
    betas = np.where(np.arange(heads) % 2 == 0, density / 2, min(1.0, 1.5 * density))
    if heads == 1:
        betas = np.array([density])
    return Plan.from_arrays(fingerprint, np.zeros((layers, heads)), np.tile(betas, (layers, 1)))


class _StepTimer:
    """A generate() streamer that stamps the time of each put() (the prompt first, then tokens)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: Any) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def _load_model(case: Case) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from moa_runtime.loading import load_model

    torch.manual_seed(0)
    if case.model == "bench":
        config = LlamaConfig(**{k: v for k, v in BENCH_MODEL.items() if k not in ("architectures", "model_type")})
        config._attn_implementation = "sdpa"
        model: Any = LlamaForCausalLM(config)
    else:
        # A model directory or a .gguf file (dequantized to fp32 by the loader).
        model = load_model(case.model, attn_implementation="sdpa")
        config = model.config
    return model.eval(), config


def _kv_bytes(cache: Any) -> int:
    if hasattr(cache, "nbytes"):
        value = cache.nbytes
        return int(value() if callable(value) else value)
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def run_case(case: Case, bandwidth: float) -> dict[str, Any]:
    """Run one case in this process and return its measurements."""
    import torch

    from moa_plan import ModelFingerprint, Plan
    from moa_profiler.memory import peak_rss_mib

    model, config = _load_model(case)
    if case.method != "dense":
        from moa_runtime import apply_plan  # type: ignore[attr-defined]

        fingerprint = ModelFingerprint.from_config(config)
        plan = Plan.load(case.plan) if case.plan else bench_plan(fingerprint, case.method, case.density)
        apply_plan(model, plan)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (case.batch, case.length), generator=gen)
    mask = torch.ones_like(ids)
    kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    if case.prefill_chunk_size is not None:
        kwargs["prefill_chunk_size"] = case.prefill_chunk_size
    with torch.inference_mode():
        # Warm-up on a short prompt: allocator, kernels, code paths.
        model.generate(ids[:, :256], attention_mask=mask[:, :256], max_new_tokens=4, **kwargs)
        timer = _StepTimer()
        start = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=case.new_tokens,
            min_new_tokens=case.new_tokens,
            streamer=timer,
            return_dict_in_generate=True,
            **kwargs,
        )
    stamps = timer.stamps
    prefill_s = stamps[1] - start
    steps = [b - a for a, b in itertools.pairwise(stamps[1:])][case.warmup_tokens :]
    step_s = statistics.median(steps)
    cache = getattr(out, "cache", None)
    kv = _kv_bytes(cache if cache is not None else out.past_key_values)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    floor_s = (weights + kv) / bandwidth
    return {
        **asdict(case),
        "prefill_s": prefill_s,
        "decode_tok_s": case.batch / step_s,
        "step_ms": step_s * 1e3,
        "kv_bytes": kv,
        "weight_bytes": weights,
        "floor_tok_s": case.batch / floor_s,
        "floor_fraction": floor_s / step_s,
        # VmHWM, not ru_maxrss: ru_maxrss is inherited from this driver through fork + exec.
        "peak_rss_bytes": int(peak_rss_mib() * 2**20),
    }


def _run_in_subprocess(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
    payload = json.dumps({"case": asdict(case), "bandwidth": bandwidth})
    proc = subprocess.run(
        [sys.executable, "-m", "moa.bench.e2e", payload], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {**asdict(case), "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_e2e(
    cases: list[Case], *, bandwidth: float, timeout: float = 900.0, progress: Any = None
) -> list[dict[str, Any]]:
    """Run every case in its own subprocess; add ratios against the dense case of the same cell."""
    rows = []
    for case in cases:
        if progress is not None:
            progress(case)
        rows.append(_run_in_subprocess(case, bandwidth, timeout))
    dense = {(r["model"], r["length"], r["batch"]): r for r in rows if r["method"] == "dense" and "error" not in r}
    for r in rows:
        base = dense.get((r["model"], r["length"], r["batch"]))
        if base is None or "error" in r:
            continue
        r["decode_speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
        r["prefill_speedup"] = base["prefill_s"] / r["prefill_s"]
        r["kv_ratio"] = r["kv_bytes"] / base["kv_bytes"]
        r["peak_rss_saving_bytes"] = base["peak_rss_bytes"] - r["peak_rss_bytes"]
        r["kv_saving_bytes"] = base["kv_bytes"] - r["kv_bytes"]
    return rows


def main(argv: list[str]) -> None:
    """Subprocess entry: run one case given as JSON and print its result as the last line."""
    import torch

    payload = json.loads(argv[0])
    case = Case(**payload["case"])
    # One thread by default: on a shared 2-core machine, OpenMP barriers against another busy process
    # turn each small matmul into milliseconds; dense and MoA run under the same setting.
    torch.set_num_threads(case.threads)
    result = run_case(case, payload["bandwidth"])
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
