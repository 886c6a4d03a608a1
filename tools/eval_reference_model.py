"""Dense and uniform-window greedy accuracy of the reference model on lines retrieval and passkey.

Prompts are `moa_plan.tasks` records asked through the chat template; the answer is the greedy
continuation up to the end-of-turn token, scored by exact match (`moa_plan.tasks.score`).

Example::

    .venv/bin/python tools/eval_reference_model.py --model models/moa-reference \\
        --lengths 512,1024,2048 --samples 200 --window-check 2048 --json /tmp/eval.json

The window check registers a ``sink_window`` attention function with transformers'
``AttentionInterface``: plain SDPA under the boolean mask ``j <= i and (j < sink or i - j < window)``
with a uniform span of ``--density`` x length (64 sink tokens + window), no runtime involved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from moa_plan import MoaError, resolve_model_source, span
from moa_plan.tasks import generate, score, to_messages
from moa_runtime.loading import load_model_and_tokenizer

_WINDOW = {"sink": 64, "window": 1 << 30}


def sink_window_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA with the sink + window mask; query [B, HQ, T, D], key/value [B, H, S, D] -> [B, T, HQ, D]."""
    del attention_mask, dropout, kwargs
    rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(rep, dim=1)
    value = value.repeat_interleave(rep, dim=1)
    t, s = query.shape[2], key.shape[2]
    i = torch.arange(s - t, s, device=query.device)[:, None]
    j = torch.arange(s, device=query.device)[None, :]
    mask = (j <= i) & ((j < _WINDOW["sink"]) | (i - j < _WINDOW["window"]))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def chat_overhead(tokenizer) -> int:
    """Tokens the chat template adds around a user message (with the generation prompt)."""
    empty = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    return len(tokenizer(empty, add_special_tokens=False)["input_ids"])


def make_records(tokenizer, task: str, length: int, samples: int, seed: int):
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return generate(
        task, samples, target_length=length, count_tokens=count, seed=seed, overhead=chat_overhead(tokenizer)
    )


@torch.no_grad()
def greedy_answers(model, tokenizer, records, max_new_tokens: int = 4, batch: int = 8) -> list[str]:
    """Greedy chat answers (decoded, up to the end-of-turn token), batching prompts of equal length."""
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
            return_tensors="pt",
        )["input_ids"][0]
        for r in records
    ]
    groups = defaultdict(list)
    for n, p in enumerate(prompts):
        groups[len(p)].append(n)
    answers = [""] * len(records)
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            part = idx[s : s + batch]
            ids = torch.stack([prompts[n] for n in part])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            for n, row in zip(part, out[:, ids.shape[1] :], strict=False):
                toks = row.tolist()
                if tokenizer.eos_token_id in toks:
                    toks = toks[: toks.index(tokenizer.eos_token_id)]
                answers[n] = tokenizer.decode(toks, skip_special_tokens=True)
    return answers


def evaluate(model, tokenizer, tasks, lengths, samples, seed) -> dict:
    """Accuracy table {task: {length: {"accuracy", "by_decile"}}}."""
    table: dict = {}
    for task in tasks:
        for length in lengths:
            recs = make_records(tokenizer, task, length, samples, seed)
            preds = greedy_answers(model, tokenizer, recs)
            hits = [score(r, p) for r, p in zip(recs, preds, strict=False)]
            deciles = defaultdict(list)
            for r, h in zip(recs, hits, strict=False):
                deciles[int(r.metadata["depth_decile"])].append(h)
            table.setdefault(task, {})[length] = {
                "accuracy": sum(hits) / len(hits),
                "by_decile": [round(sum(v) / len(v), 3) for _, v in sorted(deciles.items())],
            }
            print(
                f"{task:8s} {length:5d} acc {table[task][length]['accuracy']:.3f} deciles {table[task][length]['by_decile']}",
                flush=True,
            )
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/moa-reference"), help="model directory or .gguf file")
    p.add_argument("--lengths", default="512,1024,2048")
    p.add_argument("--tasks", default="lines,passkey")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--window-check", type=int, default=0, help="length of the uniform-window check (0: skip)")
    p.add_argument("--density", type=float, default=0.25)
    p.add_argument("--sink", type=int, default=64)
    p.add_argument("--json", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        resolve_model_source(args.model, require_weights=True)
    except MoaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_model_and_tokenizer(args.model, attn_implementation="sdpa")
    except MoaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.lengths.split(",")]
    t0 = time.time()
    result = {"dense": evaluate(model, tokenizer, args.tasks.split(","), lengths, args.samples, args.seed)}
    if args.window_check:
        n = args.window_check
        total = int(span(0.0, args.density, n, sink=args.sink, block=64))
        _WINDOW.update(sink=args.sink, window=total - args.sink)
        AttentionInterface.register("sink_window", sink_window_attention)
        model.set_attn_implementation("sink_window")
        print(f"uniform window: sink {args.sink} + window {total - args.sink} = span {total} ({total / n:.0%} of {n})")
        result["window"] = {
            "sink": args.sink,
            "window": total - args.sink,
            "length": n,
            "table": evaluate(model, tokenizer, ["lines", "passkey"], [n], args.samples, args.seed),
        }
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
