"""Benchmark driver for moa_prefill / moa_decode.

Run: ``python packages/moa-kernels/benchmarks/bench_kernels.py [--device cuda|cpu] [--dtype bf16|fp16|fp32]
[--lengths 4096,16384] [--quick] [--no-flex]``. ``--quick`` uses tiny shapes; with ``--device cpu`` it
times the PyTorch references (and dense SDPA) only. Prints a Markdown table, then the JSON result
as the last stdout line. The sweep itself lives in :mod:`moa_kernels.benchmark`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from moa_kernels.benchmark import config_from_args, format_table, run_benchmarks

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep given by ``argv``; print the table, then the JSON result as the last line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_benchmarks(config_from_args(argv))
    print(format_table(result))
    env = result["environment"]
    print(f"copy bandwidth: {result['copy_bytes_per_s'] / 1e9:.1f} GB/s on {env['hardware']} ({env})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
