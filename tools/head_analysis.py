"""Where each (layer, KV head) of a model puts its attention mass on retrieval prompts.

For every (layer, KV head) (query heads of a group averaged): the share of attention mass on the
sink tokens (key position < sink), on the last ``--local`` tokens (distance < 128, past the sink)
and beyond. Two sets of query rows are reported: ``all`` (every query at position >= sink +
local, where "beyond" is possible) and ``question`` (the last ``--question-rows`` prompt
positions: the question and the generation prompt, where the answer is looked up).
A head is *local* if >= 90% of its mass is within sink + last 128 tokens and *far-reaching* if
>= 30% lies beyond; counts are given for both row sets.

Example::

    .venv/bin/python tools/head_analysis.py --model models/moa-reference --length 2048 \\
        --samples 16 --png models/moa-reference/head_analysis.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_reference_model import make_records

from moa_plan import MoaError, resolve_model_source
from moa_plan.tasks import to_messages
from moa_runtime.loading import load_model_and_tokenizer


@torch.no_grad()
def attention_shares(model, tokenizer, records, sink: int, local: int, question_rows: int) -> dict[str, np.ndarray]:
    """Mean mass shares, float64 [rows={all,question}][L, H, 3] (sink, local, beyond)."""
    cfg = model.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    acc = {"all": [], "question": []}
    for r in records:
        text = tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        attn = model(input_ids=ids, output_attentions=True).attentions
        t = ids.shape[1]
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        is_sink = (j < sink) & (j <= i)
        is_local = (j >= sink) & (i - j < local) & (j <= i)
        per_layer = {"all": [], "question": []}
        for a in attn:
            a = a[0].double()
            shares = torch.stack([(a * is_sink).sum(-1), (a * is_local).sum(-1)], -1)
            shares = torch.cat([shares, (1 - shares.sum(-1, keepdim=True)).clamp(min=0)], -1)
            shares = shares.view(cfg.num_key_value_heads, group, t, 3).mean(1)
            per_layer["all"].append(shares[:, sink + local :].mean(1).numpy())
            per_layer["question"].append(shares[:, t - question_rows :].mean(1).numpy())
        for k in acc:
            acc[k].append(np.stack(per_layer[k]))
    return {k: np.mean(v, axis=0) for k, v in acc.items()}


def classify(shares: np.ndarray) -> dict[str, int]:
    """Counts of local (>= 0.9 within sink + local) and far-reaching (>= 0.3 beyond) heads."""
    return {
        "local": int((shares[..., :2].sum(-1) >= 0.9).sum()),
        "far": int((shares[..., 2] >= 0.3).sum()),
        "heads": int(shares.shape[0] * shares.shape[1]),
    }


def render(shares: dict[str, np.ndarray]) -> str:
    lines = [
        "| rows | layer | KV head | sink | last 128 | beyond | kind |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rows, s in shares.items():
        for layer in range(s.shape[0]):
            for h in range(s.shape[1]):
                sk, lo, be = s[layer, h]
                kind = "local" if sk + lo >= 0.9 else ("far" if be >= 0.3 else "mixed")
                lines.append(f"| {rows} | {layer} | {h} | {sk:.2f} | {lo:.2f} | {be:.2f} | {kind} |")
    return "\n".join(lines)


def heatmap(shares: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shares), 3, figsize=(9, 2.2 * len(shares) + 0.6), squeeze=False)
    for row, (rows, s) in enumerate(shares.items()):
        for col, name in enumerate(("sink", "last 128", "beyond 128")):
            ax = axes[row, col]
            im = ax.imshow(s[..., col], vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{name} ({rows} rows)", fontsize=9)
            ax.set_xlabel("KV head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(s.shape[1]))
            ax.set_yticks(range(s.shape[0]))
            for (li, hi), v in np.ndenumerate(s[..., col]):
                ax.text(hi, li, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/moa-reference"), help="model directory or .gguf file")
    p.add_argument("--task", default="lines")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=99)
    p.add_argument("--sink", type=int, default=64)
    p.add_argument("--local", type=int, default=128)
    p.add_argument("--question-rows", type=int, default=8)
    p.add_argument("--png", type=Path, default=Path("head_analysis.png"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        resolve_model_source(args.model, require_weights=True)
    except MoaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if args.length <= args.sink + args.local + args.question_rows:
        print(f"Error: length {args.length} must exceed sink + local + question rows.", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    try:
        model, tokenizer = load_model_and_tokenizer(args.model, attn_implementation="eager")
    except MoaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    records = make_records(tokenizer, args.task, args.length, args.samples, args.seed)
    shares = attention_shares(model, tokenizer, records, args.sink, args.local, args.question_rows)
    print(render(shares))
    counts = {rows: classify(s) for rows, s in shares.items()}
    for rows, c in counts.items():
        print(f"{rows} rows: {c['local']} local heads, {c['far']} far-reaching heads of {c['heads']}")
    heatmap(shares, args.png)
    print(f"heatmap: {args.png}")
    if args.json:
        args.json.write_text(
            json.dumps({"counts": counts, "shares": {k: v.tolist() for k, v in shares.items()}}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
