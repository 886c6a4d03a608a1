"""Decode throughput of a model under a uniform plan vs dense SDPA, with caches pre-filled to a length.

``python -m moa_runtime.benchmark --length 16384 --batch 4 --density 0.25``

Decode only: both caches are filled with random keys/values of ``length - 64`` tokens (no prefill), then
``--steps`` single-token forwards are timed (median of ``--repeats``). The dense baseline is transformers'
default path (DynamicCache + SDPA, which concatenates the cache each step); the model is a random-init
Llama with the reference model's shape unless ``--model`` names a model directory or a ``.gguf`` file.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

__all__ = ["decode_tokens_per_second", "main"]


def _model(path: str | None) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from moa_runtime.loading import load_model

    if path:
        return load_model(path, attn_implementation=None)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1 << 17,
    )
    return LlamaForCausalLM(cfg).eval()


def _time(model: Any, cache: Any, batch: int, start: int, steps: int, repeats: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=model.device)
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            for i in range(steps):
                pos = torch.full((batch, 1), start + r * steps + i, device=model.device)
                model(ids, cache=cache, position_ids=pos)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:  # the first round warms up
                times.append(time.perf_counter() - t0)
    return batch * steps / statistics.median(times)


def decode_tokens_per_second(
    model: Any, *, length: int, batch: int, density: float, steps: int = 8, repeats: int = 3
) -> dict[str, float]:
    """Tokens/s of dense SDPA and of the uniform ``density`` plan, caches holding ``length - 64`` tokens."""
    from transformers import DynamicCache

    from moa_plan import ModelFingerprint, Plan
    from moa_runtime.attention import apply_plan, remove_plan
    from moa_runtime.cache import MoACache

    cfg = model.config
    h = cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    filled = length - 64 - (repeats + 1) * steps
    dtype, device = model.dtype, model.device
    model.set_attn_implementation("sdpa")
    dense = DynamicCache(config=cfg)
    for idx in range(cfg.num_hidden_layers):
        k = torch.randn(batch, h, filled, dim, dtype=dtype, device=device)
        dense.update(k, torch.randn_like(k), idx)
    dense_tps = _time(model, dense, batch, filled, steps, repeats)
    del dense
    plan = Plan.uniform(ModelFingerprint.from_config(cfg), density)
    apply_plan(model, plan)
    cache = MoACache(plan, cfg, batch, length, dtype, device)
    for layer in cache.moa_layers:
        keys, values = layer._kv()
        keys.normal_()
        values.normal_()
        layer.seen = torch.full((batch,), filled, device=device)
        layer.lengths = torch.minimum(layer.seen.unsqueeze(1), layer.cap_t.unsqueeze(0))
        layer.columns = filled
    moa_tps = _time(model, cache, batch, filled, steps, repeats)
    remove_plan(model)
    return {
        "dense_tokens_per_s": dense_tps,
        "moa_tokens_per_s": moa_tps,
        "speedup": moa_tps / dense_tps,
        "moa_cache_bytes": float(cache.nbytes()),
        "dense_cache_bytes": float(cache.dense_nbytes()),
        "plan_density": plan.density(length),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: print one JSON line with the measurements and the setup."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Model directory or .gguf file (default: a random Llama).")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args.model).to(args.device)
    result = decode_tokens_per_second(
        model, length=args.length, batch=args.batch, density=args.density, steps=args.steps, repeats=args.repeats
    )
    setup = {"length": args.length, "batch": args.batch, "threads": torch.get_num_threads(), "device": args.device}
    setup |= {"torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    print(json.dumps({**setup, **result}))  # noqa: T201 -- a benchmark script's output


if __name__ == "__main__":
    main()
