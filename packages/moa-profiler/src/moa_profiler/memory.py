"""Peak-memory measurement of profiling one sample (``python -m moa_profiler.memory``; a tool, it prints).

Each length runs in a fresh subprocess; the extra peak is the process's peak RSS minus its RSS
after building the model and a short warm-up sample. The model is a seeded Llama built from a
config (no download); its size is set by the options.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys

import click

__all__ = ["measure", "main"]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    ``VmHWM`` of /proc/self/status where there is one: ``ru_maxrss`` is inherited through fork and
    exec on Linux, so a subprocess would start from its parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    length: int, *, layers: int, hidden: int, heads: int, kv_heads: int, vocab: int, max_elements: int | None
) -> dict:
    """Profile one random sample of ``length`` tokens in this process; return RSS numbers in MiB."""
    import psutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from moa_profiler.attention import register_profiling_attention
    from moa_profiler.sample import InfluenceSettings, prepare_model, profile_sample

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max(4096, length),
    )
    model = LlamaForCausalLM(config)
    register_profiling_attention()
    prepare_model(model)
    settings = InfluenceSettings(max_elements=max_elements)
    profile_sample(model, torch.randint(0, vocab, (128,)), 96, 128, settings)
    base = psutil.Process().memory_info().rss / 2**20
    ids = torch.randint(0, vocab, (length,))
    profile_sample(model, ids, length - 64, length, settings)
    peak = peak_rss_mib()
    return {
        "length": length,
        "base_mib": round(base, 1),
        "peak_mib": round(peak, 1),
        "extra_mib": round(peak - base, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--max-elements", type=int, help="chunk bound (default: by device); 0: whole H x N x N")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "kv_heads", "vocab")}
    if args.one is not None:
        elements = args.max_elements if args.max_elements != 0 else args.heads * args.one * args.one
        click.echo(json.dumps(measure(args.one, max_elements=elements, **shape)))
        return 0
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        cmd = [
            sys.executable,
            "-m",
            "moa_profiler.memory",
            "--one",
            str(n),
            *(argv if argv is not None else sys.argv[1:]),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        click.echo(json.dumps(rows[-1]))
    if len(rows) > 1:
        growth = [round(b["extra_mib"] / a["extra_mib"], 2) for a, b in itertools.pairwise(rows)]
        click.echo(json.dumps({"extra_growth": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
