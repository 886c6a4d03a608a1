"""DIAGNOSTIC ONLY: train the gate statistic on the *evaluation* prompts, to bound what a plan of K whole heads can do.

Never a way to make a plan to ship: it calibrates on evaluation data. What it answers is whether *any* set of K whole
KV heads (the rest local) retrieves at a length where the calibrated plans miss: the gates are trained
(`moa_profiler.gate.train_gates`, the recipe of `make experiment`) on exactly the prompts `moa eval retrieval`
scores (``niah``, ``passkey-en``, completion form, seed 1234, one per depth decile), with their reference answers,
so the heads they keep are an in-sample oracle's choice. `tools/gate_topk_plan.py` then turns the values into a plan
of K whole heads, and `moa eval retrieval` measures it on those same prompts (RESULTS.md, twenty-ninth session).

    OMP_NUM_THREADS=1 .venv/bin/python tools/oracle_gates.py --length 1024 --out runs/oracle-1024.json   # ~36 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("passkey-en", "niah")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--length", type=int, required=True, help="Prompt length in tokens, as `moa eval retrieval`.")
    parser.add_argument("--samples", type=int, default=10, help="Prompts per task (one per depth decile from 10).")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--penalty", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True, help="Gate values, the format of gates-*.json.")
    args = parser.parse_args(argv)
    if args.length < 256:
        return _fail(f"--length must be at least 256 tokens, got {args.length}")
    if args.samples < 1 or args.steps < 1:
        return _fail(f"--samples and --steps must be positive, got {args.samples} and {args.steps}")
    if not args.out.parent.is_dir():
        return _fail(f"the folder of --out does not exist: {args.out.parent}")

    sys.path[:0] = [str(ROOT / "packages" / p / "src") for p in ("moa-plan", "moa-profiler", "moa")]
    import torch

    from moa.evaluate import retrieval_prompts
    from moa_plan import MoaError, atomic_write_text
    from moa_profiler.attention import register_profiling_attention
    from moa_profiler.gate import train_gates
    from moa_profiler.models import load_model, load_tokenizer
    from moa_profiler.sample import InfluenceSettings, prepare_model

    try:
        model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    except MoaError as exc:
        return _fail(str(exc))

    samples = []
    for task in TASKS:
        # The very prompts `moa eval retrieval` scores (completion form, seed 1234), the reference answer after each.
        records, prompts = retrieval_prompts(tokenizer, task, args.length, args.samples)
        for record, text in zip(records, prompts, strict=True):
            prompt = tokenizer(text).input_ids
            answer = tokenizer(" " + str(record.answer), add_special_tokens=False).input_ids
            samples.append((torch.tensor(prompt + answer), len(prompt), len(prompt) + len(answer)))
    register_profiling_attention()
    prepare_model(model)
    settings = InfluenceSettings(
        statistic="gate", sink=64, block=64, gate_steps=args.steps, gate_lr=args.lr, gate_penalty=args.penalty
    )
    start = time.time()
    run = train_gates(
        model, samples, settings, checkpoint=args.out.with_suffix(".ckpt.json"), key=f"oracle-{args.length}",
        progress=lambda line: print(f"{time.time() - start:6.0f} s  {line}", flush=True),
    )  # fmt: skip
    record = {**run.to_json(), "length": args.length, "tasks": list(TASKS), "note": "DIAGNOSTIC: evaluation prompts"}
    atomic_write_text(args.out, json.dumps(record))
    args.out.with_suffix(".ckpt.json").unlink(missing_ok=True)  # finished: nothing left to resume
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
