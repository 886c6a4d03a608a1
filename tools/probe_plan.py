"""Write a probe of a plan: every rule of one slope replaced by a fixed number of tokens at every length.

A diagnostic of what a plan lacks at some length (RESULTS.md, twenty-eighth session): e.g. the SmolLM2 25% plan's
local heads (slope N/8) fixed at 128 tokens, what they hold at 1024, to evaluate at 4096; or at 512, what they hold at
4096, to evaluate at 1024. The probe is not budget-checked; `moa plan show` prints its densities.

    .venv/bin/python tools/probe_plan.py plans/smollm2-135m-instruct/moa-gate64-1k2k-reference-0.25.json \\
        --beta 0.125 --tokens 512 --out runs/probe-local512.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "moa-plan" / "src"))

from moa_plan import MoaError, Plan, PlanError


def probe(plan: Plan, beta: float, tokens: int) -> tuple[Plan, int]:
    """``plan`` with every rule of slope ``beta`` (offset any) replaced by ``(tokens, 0)``; and how many were replaced."""
    alphas, betas = plan.alphas.copy(), plan.betas.copy()
    hit = abs(betas - beta) < 1e-9
    alphas[hit], betas[hit] = float(tokens), 0.0
    prov = plan.provenance.model_copy(
        update={"notes": f"probe of a plan: rules of slope {beta:g} fixed at {tokens} tokens ({int(hit.sum())} heads)"}
    )
    out = Plan.from_arrays(plan.model, alphas, betas, sink=plan.sink, block=plan.block, provenance=prov)
    return out, int(hit.sum())


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--beta", type=float, required=True, help="Slope of the rules to replace.")
    parser.add_argument("--tokens", type=int, required=True, help="Their fixed span in tokens, sink included.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.tokens < 1:
        return _fail(f"--tokens must be a positive number of tokens, got {args.tokens}")
    try:
        plan = Plan.load(args.plan)
    except (OSError, PlanError) as exc:
        return _fail(f"cannot read plan {args.plan}: {exc}")
    out, count = probe(plan, args.beta, args.tokens)
    if count == 0:
        return _fail(f"no rule of {args.plan} has slope {args.beta:g}")
    try:
        out.save(args.out)
    except MoaError as exc:  # atomic_write_text's one sentence: "cannot write PATH: reason"
        return _fail(str(exc))
    print(f"wrote {args.out}: {count} heads fixed at {args.tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
