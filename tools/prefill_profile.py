"""Where one prefill's time goes: torch.profiler over `moa.bench.e2e`'s prefill of one row, dense or with a plan.

    .venv/bin/python tools/prefill_profile.py --model models/smollm2-135m-instruct --length 8192 [--plan PLAN.json] [--chunk 2048] [--linear packed]

Prints the prefill time and the top operators by self CPU time (one torch thread, as the benchmark).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--plan", help="a plan file (default: dense SDPA with a static cache)")
    parser.add_argument("--chunk", type=int, default=0, help="prefill chunk in tokens (0: one pass)")
    parser.add_argument("--rows", type=int, default=14, help="operators to print")
    parser.add_argument("--linear", default="torch", help="torch, left or packed, as `moa bench e2e --linear`")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from moa.bench.e2e import LINEARS, Case, _load_model, _new_cache, _plan_for, _prefill
    from moa_runtime import apply_plan

    torch.set_num_threads(1)
    case = Case(
        model=args.model,
        method="moa" if args.plan else "dense-static",
        plan=args.plan,
        length=args.length,
        batch=1,
        linear=args.linear,
    )
    if args.linear not in LINEARS:
        print(f"error: --linear must be one of {', '.join(LINEARS)}, got {args.linear!r}.")
        return 2
    model, config = _load_model(case)  # routes the linears as the benchmark does
    plan = _plan_for(case, config) if args.plan else None
    if plan is not None:
        apply_plan(model, plan)
    ids = torch.randint(3, config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _prefill(model, ids[:, :256], _new_cache(case, config, plan, 300), None)
        cache = _new_cache(case, config, plan, args.length + 8)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            _prefill(model, ids, cache, args.chunk or None)
            seconds = time.perf_counter() - start
    print(f"N={args.length} plan={args.plan or 'dense'} chunk={args.chunk or 'one pass'}: prefill {seconds:.2f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
