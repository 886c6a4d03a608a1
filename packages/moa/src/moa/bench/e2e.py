"""End-to-end benchmark: dense Hugging Face baselines vs uniform and MoA plans, one process per case.

Methods:

- ``dense``: SDPA with transformers' default dynamic cache (concatenates the cache at every step);
- ``dense-static``: SDPA with a preallocated ``StaticCache``, what a speed-minded user runs and the
  baseline every ratio is taken against;
- ``dense-compiled``: ``dense-static`` with ``torch.compile`` of the decode step;
- ``uniform`` / ``moa``: a plan through `moa_runtime.apply_plan` (its ``MoACache`` holds only each
  head's span).

Each case runs in a fresh subprocess, so its peak memory (``VmHWM``) is its own. The prompt is
prefilled (timed; one pass or in chunks), then decode steps run one by one through the model's own
forward (the same loop for every method, what ``generate`` does without its logits processors) and the
median step gives tokens/s. With ``prefill_rows = 1`` one row is prefilled and its cache replicated to
the batch: a decode step reads the same bytes either way, and a batch of long prompts is prefilled one
request at a time by a server anyway (the prefill time reported is then that one row's). Beside each
decode figure stands the physical floor: bytes that must be read per step (weights + kept KV) over the
copy bandwidth measured in the same run.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = [
    "BASELINE",
    "BENCH_MODEL",
    "METHODS",
    "Case",
    "add_ratios",
    "bench_plan",
    "find_max_batch",
    "run_case",
    "run_e2e",
]

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

METHODS = ("dense", "dense-static", "dense-compiled", "uniform", "moa")
LINEARS = ("torch", "left", "packed")
BASELINE = "dense-static"
_DENSE = ("dense", "dense-static", "dense-compiled")


@dataclass(frozen=True, kw_only=True)
class Case:
    """One benchmark cell."""

    model: str  # "bench", a model directory or a .gguf file
    method: str  # one of METHODS
    length: int
    batch: int
    density: float = 1.0
    name: str | None = None  # label of the plan (default: the method and density)
    plan: str | None = None  # a plan file (uniform/moa); otherwise bench_plan(method, density)
    new_tokens: int = 24
    warmup_tokens: int = 4
    threads: int = 1
    # Prefill chunk in tokens: None is the method's default (dense: one pass; plans: apply_plan's
    # prefill_chunk, 4096, for longer prompts), 0 is one pass for every method.
    prefill_chunk_size: int | None = None
    prefill_rows: int | None = None  # rows prefilled (None: the whole batch); must divide batch
    dtype: str = "float32"
    profile_step: bool = False  # also record the top operators of one decode step (torch.profiler)
    # "left": every nn.Linear through moa_runtime.left_operand_linears (decode's weight products as W @ x.T), for
    # every method alike; "torch": F.linear as transformers runs it.
    linear: str = "torch"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.method if self.method in _DENSE else f"{self.method}-{self.density:g}"


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


def _load_model(case: Case) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from moa_runtime import left_operand_linears, packed_linears
    from moa_runtime.loading import load_model

    torch.manual_seed(0)
    dtype = getattr(torch, case.dtype)
    if case.model == "bench":
        config = LlamaConfig(**{k: v for k, v in BENCH_MODEL.items() if k not in ("architectures", "model_type")})
        config._attn_implementation = "sdpa"
        model: Any = LlamaForCausalLM(config).to(dtype)
    else:
        # A model directory or a .gguf file (dequantized to fp32 by the loader).
        model = load_model(case.model, attn_implementation="sdpa").to(dtype)
        config = model.config
    if case.linear == "left":
        left_operand_linears(model)
    elif case.linear == "packed":
        packed_linears(model, rows_hint=case.batch)
    return model.eval(), config


def _plan_for(case: Case, config: Any) -> Any:
    from moa_plan import ModelFingerprint, Plan

    if case.plan:
        return Plan.load(case.plan)
    return bench_plan(ModelFingerprint.from_config(config), case.method, case.density)


def _new_cache(case: Case, config: Any, plan: Any, total: int) -> Any:
    from transformers import DynamicCache, StaticCache

    from moa_runtime import MoACache

    if plan is not None:
        return MoACache(plan, config, max_length=total)
    if case.method == "dense":
        return DynamicCache(config=config)
    return StaticCache(config=config, max_cache_len=total)


def _repeat_rows(cache: Any, repeats: int) -> None:
    """Replicate every row of ``cache`` ``repeats`` times, in place (static buffers stay static)."""
    import torch
    from transformers import StaticCache

    if repeats == 1:
        return
    if not isinstance(cache, StaticCache):
        cache.batch_repeat_interleave(repeats)
        return
    layer: Any
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
        layer.values = layer.values.repeat_interleave(repeats, dim=0)
        layer.batch_size = layer.keys.shape[0]
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)


def _prefill(model: Any, ids: Any, cache: Any, chunk: int | None) -> Any:
    """Run the prompt through ``model`` into ``cache`` (in chunks of ``chunk`` tokens); last logits [B, V]."""
    import torch

    length = ids.shape[1]
    step = length if not chunk else int(chunk)
    logits = None
    for start in range(0, length, step):
        piece = ids[:, start : start + step]
        out = model(
            input_ids=piece,
            cache=cache,
            cache_position=torch.arange(start, start + piece.shape[1]),
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
    return logits


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


def _kv_formula(config: Any, plan: Any, total: int, batch: int, elt: int) -> int:
    """sum(span) x 2 x head_dim x dtype bytes x batch: the KV a cache must hold, by definition."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if plan is None:
        slots = text.num_hidden_layers * text.num_key_value_heads * total
    else:
        slots = int(plan.spans(total).sum())
    return int(slots * 2 * dim * elt * batch)


def _profile_step(step: Callable[[], Any], top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` operators of one call of ``step`` by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "calls": int(e.count),
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:top]
    ]


def run_case(case: Case, bandwidth: float) -> dict[str, Any]:
    """Run one case in this process and return its measurements."""
    import torch

    from moa_profiler.memory import peak_rss_mib
    from moa_runtime import apply_plan
    from moa_runtime.attention import PREFILL_CHUNK

    if case.method not in METHODS:
        raise ValueError(f"unknown method {case.method!r}; expected one of {', '.join(METHODS)}.")
    rows = case.prefill_rows or case.batch
    if case.batch % rows:
        raise ValueError(f"prefill_rows {rows} does not divide batch {case.batch}.")
    if case.linear not in LINEARS:
        raise ValueError(f"unknown linear {case.linear!r}; expected one of {', '.join(LINEARS)}.")
    model, config = _load_model(case)
    plan = None
    if case.method in ("uniform", "moa"):
        plan = _plan_for(case, config)
        apply_plan(model, plan)
    chunk = case.prefill_chunk_size
    if chunk is None and plan is not None and case.length > PREFILL_CHUNK:
        chunk = PREFILL_CHUNK
    total = case.length + case.new_tokens + int(case.profile_step)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (rows, case.length), generator=gen)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    base_rss = peak_rss_mib()
    with torch.inference_mode():
        # Warm-up on a short prompt and a throwaway cache: allocator, kernels, code paths.
        _prefill(model, ids[:, :256], _new_cache(case, config, plan, 260), None)
        cache = _new_cache(case, config, plan, total)
        start = time.perf_counter()
        logits = _prefill(model, ids, cache, chunk)
        prefill_s = time.perf_counter() - start
        _repeat_rows(cache, case.batch // rows)
        token = logits.argmax(-1, keepdim=True).repeat_interleave(case.batch // rows, dim=0)
        forward = torch.compile(model.forward, dynamic=False) if case.method == "dense-compiled" else model.forward
        steps, tokens = [], [int(token[0, 0])]
        for i in range(case.new_tokens):
            position = torch.tensor([case.length + i])
            t0 = time.perf_counter()
            out = forward(input_ids=token, cache=cache, cache_position=position, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(time.perf_counter() - t0)
            tokens.append(int(token[0, 0]))
        profile = None
        if case.profile_step:
            # One more step, profiled (every cache was sized for it).
            position = torch.tensor([case.length + case.new_tokens])
            profile = _profile_step(
                lambda: forward(input_ids=token, cache=cache, cache_position=position, use_cache=True, logits_to_keep=1)
            )
    step_s = statistics.median(steps[case.warmup_tokens :])
    kv = _kv_bytes(cache)
    elt = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    kv_formula = _kv_formula(config, plan, total, case.batch, elt)
    # The floor counts the KV a step must read: the tokens kept, not a static buffer's empty slots.
    floor_s = (weights + kv_formula) / bandwidth
    result: dict[str, Any] = {
        **asdict(case),
        "label": case.label,
        "prefill_chunk": chunk or 0,
        "prefill_s": prefill_s,
        "first_step_s": steps[0],
        "decode_tok_s": case.batch / step_s,
        "step_ms": step_s * 1e3,
        "kv_bytes": kv,
        "kv_formula_bytes": kv_formula,
        "kv_vs_formula": kv / kv_formula,
        "kv_density": kv_formula / _kv_formula(config, None, total, case.batch, elt),
        "weight_bytes": weights,
        "floor_tok_s": case.batch / floor_s,
        "floor_fraction": floor_s / step_s,
        "model_rss_bytes": int(base_rss * 2**20),
        # VmHWM, not ru_maxrss: ru_maxrss is inherited from this driver through fork + exec.
        "peak_rss_bytes": int(peak_rss_mib() * 2**20),
        "tokens": tokens[: case.new_tokens],  # row 0's greedy tokens (a check that every method decodes alike)
    }
    if profile is not None:
        result["profile"] = profile
    return result


def _run_in_subprocess(case: Case, bandwidth: float, timeout: float) -> dict[str, Any]:
    payload = json.dumps({"case": asdict(case), "bandwidth": bandwidth})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "moa.bench.e2e", payload], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**asdict(case), "label": case.label, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode} (killed?)"]
        return {**asdict(case), "label": case.label, "error": tail[0]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of each row against the ``dense-static`` row (and the ``dense`` row) of its cell.

    A cell is (model, length, batch). ``floor_ratio`` is the ratio the bandwidth floor allows and
    ``of_floor_ratio`` the share of it reached.
    """

    def cells(method: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(r["model"], r["length"], r["batch"]): r for r in rows if r["method"] == method and "error" not in r}

    static, dynamic = cells(BASELINE), cells("dense")
    for r in rows:
        if "error" in r:
            continue
        key = (r["model"], r["length"], r["batch"])
        base = static.get(key)
        if base is not None:
            r["decode_speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
            r["prefill_speedup"] = base["prefill_s"] / r["prefill_s"]
            r["floor_ratio"] = r["floor_tok_s"] / base["floor_tok_s"]
            r["of_floor_ratio"] = r["decode_speedup"] / r["floor_ratio"]
            r["kv_ratio"] = r["kv_formula_bytes"] / base["kv_formula_bytes"]
            r["peak_rss_saving_bytes"] = base["peak_rss_bytes"] - r["peak_rss_bytes"]
        if key in dynamic:
            r["decode_vs_dynamic"] = r["decode_tok_s"] / dynamic[key]["decode_tok_s"]
    return rows


def combine_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a case: median decode tok/s and prefill s, the largest peak.

    The runs' own values stay in ``decode_tok_s_runs`` / ``prefill_s_runs`` (in run order); a case
    with a failed run keeps the successful ones and counts them in ``rounds``.
    """
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(ok[0])
    row["decode_tok_s"] = statistics.median(r["decode_tok_s"] for r in ok)
    row["prefill_s"] = statistics.median(r["prefill_s"] for r in ok)
    row["step_ms"] = row["batch"] / row["decode_tok_s"] * 1e3
    row["floor_fraction"] = row["decode_tok_s"] / row["floor_tok_s"]
    row["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
    row["decode_tok_s_runs"] = [r["decode_tok_s"] for r in ok]
    row["prefill_s_runs"] = [r["prefill_s"] for r in ok]
    row["decode_spread"] = (max(row["decode_tok_s_runs"]) - min(row["decode_tok_s_runs"])) / row["decode_tok_s"]
    row["rounds"] = len(ok)
    return row


def run_e2e(
    cases: list[Case], *, bandwidth: float, timeout: float = 1800.0, progress: Any = None, rounds: int = 1
) -> list[dict[str, Any]]:
    """Run every case in its own subprocess, ``rounds`` times round-robin (so that a slow spell of a shared
    machine hits every method alike), combine each case's runs (`combine_rounds`) and add ratios against
    the dense static-cache case of its cell."""
    runs: list[list[dict[str, Any]]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, case in enumerate(cases):
            if progress is not None:
                progress(case)
            runs[i].append(_run_in_subprocess(case, bandwidth, timeout))
    return add_ratios([combine_rounds(r) if rounds > 1 else r[0] for r in runs])


def find_max_batch(
    case: Case,
    limit_bytes: int,
    *,
    bandwidth: float,
    timeout: float = 1800.0,
    progress: Any = None,
    max_batch: int = 1024,
) -> dict[str, Any]:
    """The largest batch whose measured peak (VmHWM) stays within ``limit_bytes``, and its decode speed.

    Peak memory grows with the batch (the cache's rows) plus a constant (weights, one row's prefill).
    Every verdict is a measured run: batch 1, then batch 4, then the secant through the two measured
    batches that bracket the limit (or the two largest that fit) until the largest batch that fits is
    next to one that does not. A run that fails (the machine's memory, the timeout) bounds the search
    from above without a peak to extrapolate from, so the search bisects until it has one.

    Returns:
        The row of the largest batch that fits (``fits_gib``, ``tried`` added), or an ``error`` row when
        batch 1 does not fit.
    """
    runs: dict[int, dict[str, Any]] = {}

    def run(batch: int) -> dict[str, Any]:
        if batch not in runs:
            trial = replace(case, batch=batch, prefill_rows=1)
            if progress is not None:
                progress(trial)
            runs[batch] = _run_in_subprocess(trial, bandwidth, timeout)
        return runs[batch]

    def peak(batch: int) -> float:
        row = run(batch)
        return math.inf if "error" in row else float(row["peak_rss_bytes"])

    if peak(1) > limit_bytes:
        return {**run(1), "error": run(1).get("error") or "batch 1 exceeds the memory limit"}
    lo, hi = 1, None  # largest batch known to fit, smallest known not to
    guess = min(4, max_batch)
    for _ in range(32):
        if guess <= lo or (hi is not None and guess >= hi):
            break
        if peak(guess) <= limit_bytes:
            lo = guess
        else:
            hi = guess
        if lo >= max_batch or (hi is not None and hi - lo <= 1):
            break
        if hi is not None and not math.isfinite(peak(hi)):
            # A run that failed (out of memory, timeout) brackets the limit but gives no peak to draw a
            # line through: bisect until a measured peak above the limit does.
            guess = (lo + hi) // 2
            continue
        if hi is not None:
            a, b = lo, hi
        else:
            fitting = sorted(x for x in runs if x <= lo and peak(x) <= limit_bytes)
            a, b = (fitting[-2], fitting[-1]) if len(fitting) > 1 else (lo, lo)
        slope = (peak(b) - peak(a)) / (b - a) if b > a else 0.0
        step = int((limit_bytes - peak(lo)) // slope) if slope > 0 else 2 * lo
        guess = lo + max(1, step)
        if hi is not None:
            guess = min(guess, hi - 1)
        guess = min(guess, max_batch)
    best = lo
    row = dict(run(best))
    row["fits_gib"] = limit_bytes / 2**30
    row["tried"] = {b: (r.get("peak_rss_bytes"), r.get("error")) for b, r in sorted(runs.items())}
    return row


def main(argv: list[str]) -> None:
    """Subprocess entry: run one case given as JSON and print its result as the last line."""
    import torch

    payload = json.loads(argv[0])
    case = Case(**payload["case"])
    # One thread by default: on a shared 2-core machine, OpenMP barriers against another busy process
    # turn each small matmul into milliseconds; dense and MoA run under the same setting.
    torch.set_num_threads(case.threads)
    result = run_case(case, payload["bandwidth"])
    sys.stdout.write(json.dumps(result, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
