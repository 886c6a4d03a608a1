"""Write a DuoAttention-like plan from gate values: the K KV heads of highest value whole, every other head local.

A gate record (`moa profile --statistic gate` writes ``profile-N.gates.json``; `plans/smollm2-135m-instruct/gates-*.json`)
prices each KV head: the L1 penalty its gate withstood, in nats. This plan keeps the K dearest heads whole (rule
``0 + 1 x N``) and gives every other head ``0 + LOCAL_BETA x N`` (default N/8, what the sink + one block is at 1024),
so it is DuoAttention's "retrieval heads whole, the rest streaming" with a local window that grows with N. With
several gate files the values are summed (``--combine sum``) or, each divided by its own largest value first, the
largest per head taken (``--combine max``: a head that one calibration task needs is kept even when the others do
not). The model, sink and block come from ``--like``, any plan of the same model. Not budget-checked: the densities
are printed (RESULTS.md, twenty-ninth session, for what such plans retrieve on SmolLM2).

    .venv/bin/python tools/gate_topk_plan.py plans/smollm2-135m-instruct/gates-64-reference-1024.json \\
        plans/smollm2-135m-instruct/gates-64-reference-2048.json --whole 12 \\
        --like plans/smollm2-135m-instruct/moa-gate64-1k2k-reference-0.25.json --out runs/top12.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "moa-plan" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "moa-profiler" / "src"))

from moa_plan import MoaError, Plan, PlanError


def gate_values(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The ``[layers, kv_heads]`` values of one gate record, checked by `moa_profiler.gate.load_gate_run`.

    Raises:
        MoaError: one sentence naming the file and what is wrong with it.
    """
    from moa_profiler.gate import load_gate_run

    run = load_gate_run(path, layers=shape[0], kv_heads=shape[1])
    out = np.zeros(shape)
    for (layer, head), value in run.values.items():
        out[layer, head] = value
    return out


def combine(values: list[np.ndarray], how: str) -> np.ndarray:
    """Sum of the runs' values, or the largest per head of each run's values over its own largest."""
    if how == "sum":
        return np.sum(values, axis=0)
    return np.max([v / v.max() if v.max() > 0 else v for v in values], axis=0)


def topk_plan(like: Plan, values: np.ndarray, whole: int, local_beta: float) -> tuple[Plan, list[tuple[int, int]]]:
    """``whole`` heads of highest value at ``0 + N``, the rest at ``0 + local_beta x N``; and the whole heads, dearest first.

    Ties go to the lower (layer, head), so the same values always give the same plan.
    """
    order = sorted(np.ndindex(values.shape), key=lambda h: (-values[h], h))
    chosen = [(int(h[0]), int(h[1])) for h in order[:whole]]
    alphas, betas = np.zeros(values.shape), np.full(values.shape, local_beta)
    for h in chosen:
        betas[h] = 1.0
    prov = like.provenance.model_copy(
        update={"notes": f"gate top-{whole}: the dearest KV heads whole, the rest {local_beta:g} x N"}
    )
    return Plan.from_arrays(like.model, alphas, betas, sink=like.sink, block=like.block, provenance=prov), chosen


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gates", type=Path, nargs="+", help="gates-*.json files of `moa profile --statistic gate`.")
    parser.add_argument("--whole", type=int, required=True, help="How many KV heads keep every token.")
    parser.add_argument("--local-beta", type=float, default=0.125, help="Slope of every other head (default 1/8).")
    parser.add_argument("--combine", choices=("sum", "max"), default="sum", help="How several gate files combine.")
    parser.add_argument("--like", type=Path, required=True, help="A plan of the same model: its model, sink, block.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0.0 < args.local_beta < 1.0:
        return _fail(f"--local-beta must lie strictly between 0 and 1, got {args.local_beta:g}")
    try:
        like = Plan.load(args.like)
    except (OSError, PlanError) as exc:
        return _fail(f"cannot read plan {args.like}: {exc}")
    shape = like.betas.shape
    if not 0 <= args.whole <= shape[0] * shape[1]:
        return _fail(f"--whole must lie in 0..{shape[0] * shape[1]} (the model's KV heads), got {args.whole}")
    try:
        values = combine([gate_values(p, shape) for p in args.gates], args.combine)
    except MoaError as exc:
        return _fail(str(exc))
    plan, chosen = topk_plan(like, values, args.whole, args.local_beta)
    try:
        plan.save(args.out)
    except MoaError as exc:  # atomic_write_text's one sentence: "cannot write PATH: reason"
        return _fail(str(exc))
    heads = ", ".join(f"{layer}.{head} ({values[layer, head]:.3f})" for layer, head in chosen)
    density = ", ".join(f"{n}: {plan.density(n):.3f}" for n in (1024, 2048, 4096, 8192))
    print(f"wrote {args.out}: whole {heads}; KV density {density}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
