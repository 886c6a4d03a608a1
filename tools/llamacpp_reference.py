"""The reference row of what CPU users of this GGUF actually run: llama.cpp through llama-cpp-python.

Prefill and decode of SmolLM2-135M-Instruct's GGUF (the Q4_1 file ``make assets`` links as
``models/smollm2-135m-instruct.gguf``, run as llama.cpp runs it: quantized weights, its own KV
cache) at the lengths of ``moa bench e2e``, batch 1, on N random token ids (seed 1, ids >= 3, as
the bench draws them), greedy decoding. llama-cpp-python builds llama.cpp from its sdist, so it
lives in a venv of its own and is a dependency of nothing::

    python3 tools/llamacpp_reference.py --setup ~/.cache/moa/llamacpp-venv     # builds llama.cpp (~5 min here)
    ~/.cache/moa/llamacpp-venv/bin/python tools/llamacpp_reference.py --lengths 4096,8192 --threads 1 \\
        --out runs/llamacpp

Each length runs in its own process (a fresh context, so one length's memory does not carry into
the next). Prints a Markdown table (prefill s, decode tok/s = 1 / median step, peak RSS) and
writes ``llamacpp.json`` and ``llamacpp.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.3.36"
DEFAULT_GGUF = "models/smollm2-135m-instruct.gguf"


def setup(venv: Path) -> int:
    """Create ``venv`` and build llama-cpp-python there (CPU only)."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"llama-cpp-python=={VERSION}"], check=True)
    print(f"llama-cpp-python {VERSION} is ready in {venv}")
    return 0


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(gguf: str, length: int, new_tokens: int, threads: int) -> dict[str, object]:
    """Prefill ``length`` random tokens, then ``new_tokens`` greedy steps; timings in this process."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=gguf,
        n_ctx=length + new_tokens + 8,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    vocab = llm.n_vocab()
    ids = np.random.default_rng(1).integers(3, vocab, size=length).tolist()
    llm.eval(ids[:256])  # warm-up, then a fresh context
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - start
    steps, tokens = [], []
    for _ in range(new_tokens):
        # the context's logits of the last evaluated token (llama-cpp-python keeps none without logits_all)
        token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))
        tokens.append(token)
        t0 = time.perf_counter()
        llm.eval([token])
        steps.append(time.perf_counter() - t0)
    step = statistics.median(steps[2:])
    return {
        "engine": f"llama.cpp (llama-cpp-python {VERSION})",
        "gguf": gguf,
        "length": length,
        "batch": 1,
        "threads": threads,
        "prefill_s": prefill_s,
        "decode_tok_s": 1.0 / step,
        "peak_rss_mib": _peak_rss_mib(),
        "tokens": tokens,
    }


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """One sentence naming the first bad argument, or None."""
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        return f"--lengths must be comma-separated integers, got {args.lengths!r}."
    if not lengths or min(lengths) < 1:
        return f"--lengths must be positive token counts, got {args.lengths!r}."
    if args.new_tokens < 3:
        return f"--new-tokens must be at least 3 (the first two steps are warm-up), got {args.new_tokens}."
    if args.threads < 1:
        return f"--threads must be at least 1, got {args.threads}."
    if not Path(args.gguf).is_file():
        return f"GGUF file not found: {args.gguf} (run `make assets` first)."
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", type=Path, metavar="VENV", help="create VENV and build llama-cpp-python in it")
    parser.add_argument("--gguf", default=DEFAULT_GGUF)
    parser.add_argument("--lengths", default="4096,8192")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/llamacpp"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one length, print JSON
    args = parser.parse_args(argv)
    if args.setup is not None:
        return setup(args.setup)
    problem = _bad_arguments(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print(
            "llama_cpp is not importable here: run this script with the python of the venv that `--setup VENV` built.",
            file=sys.stderr,
        )
        return 2
    if args.one is not None:
        print(json.dumps(run_one(args.gguf, args.one, args.new_tokens, args.threads)))
        return 0
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    rows = []
    for length in lengths:
        cmd = [sys.executable, __file__, "--gguf", args.gguf, "--new-tokens", str(args.new_tokens)]
        proc = subprocess.run(
            [*cmd, "--threads", str(args.threads), "--one", str(length)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            rows.append({"length": length, "error": tail})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lines = [
        f"llama.cpp reference: `{' '.join(['tools/llamacpp_reference.py', *argv])}` "
        f"({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')})",
        "",
        "| length | batch | threads | prefill s | decode tok/s | peak RSS MiB | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['length']} | 1 | {args.threads} | - | - | - | {r['error']} |")
        else:
            lines.append(
                f"| {r['length']} | 1 | {args.threads} | {r['prefill_s']:.2f} | {r['decode_tok_s']:.2f} "
                f"| {r['peak_rss_mib']:.0f} | - |"
            )
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llamacpp.json").write_text(json.dumps(rows, indent=1))
    (args.out / "llamacpp.md").write_text(text)
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
