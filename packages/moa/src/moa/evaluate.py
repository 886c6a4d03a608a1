"""Evaluation of plans side by side: retrieval accuracy by length x depth, and answer-token loss.

``dense`` runs the unmodified model (SDPA); every other plan runs through moa-runtime with its
own per-head cache, so what is measured is what a user would serve.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moa_plan import MoaError, ModelFingerprint, Plan

__all__ = [
    "PlanSpec",
    "answer_loss",
    "effective_context",
    "load_model",
    "parse_plan_specs",
    "retrieval_eval",
    "task_eval",
    "task_summary",
    "using_plan",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanSpec:
    """A named plan to evaluate; ``plan`` is None for the unmodified dense model."""

    name: str
    plan: Plan | None


def parse_plan_specs(specs: Sequence[str], fingerprint: ModelFingerprint) -> list[PlanSpec]:
    """Plans from ``dense``, ``uniform:F``, ``head:L.H``, ``heads`` or ``NAME=PATH`` / ``PATH`` specs.

    ``head:L.H`` is a one-head probe: KV head H of layer L keeps every token, every other head
    only the sink and one block; ``heads`` is one probe per KV head. A task that still scores
    well under ``head:L.H`` needs no other head's long range, which is how to find out which
    heads a budget must keep whole. Uniform and probe plans take the sink and block size of the
    first plan file given, so every plan is compared with the same sink and rounding.

    Raises:
        MoaError: for a malformed spec or a plan that does not fit the model.
    """
    loaded: dict[str, Plan] = {}
    for spec in specs:
        if spec not in ("dense", "heads") and not spec.startswith(("uniform:", "head:")):
            plan = Plan.load(spec.rpartition("=")[2])
            plan.check_compatible(fingerprint)
            loaded[spec] = plan
    first = next(iter(loaded.values()), None)
    sink, block = (first.sink, first.block) if first is not None else (64, 64)
    out = []
    for spec in specs:
        if spec == "dense":
            out.append(PlanSpec("dense", None))
        elif spec.startswith("uniform:"):
            try:
                fraction = float(spec.split(":", 1)[1])
            except ValueError:
                raise MoaError(f"plan spec {spec!r}: expected uniform:FRACTION with a number") from None
            out.append(PlanSpec(f"uniform-{fraction:g}", Plan.uniform(fingerprint, fraction, sink=sink, block=block)))
        elif spec == "heads":
            out += [
                _head_probe(fingerprint, layer, head, sink, block)
                for layer in range(fingerprint.num_layers)
                for head in range(fingerprint.num_key_value_heads)
            ]
        elif spec.startswith("head:"):
            layer, _, head = spec.split(":", 1)[1].partition(".")
            if not (layer.isdigit() and head.isdigit()):
                raise MoaError(f"plan spec {spec!r}: expected head:LAYER.KV_HEAD, e.g. head:1.0")
            out.append(_head_probe(fingerprint, int(layer), int(head), sink, block))
        else:
            name, _, path = spec.rpartition("=")
            out.append(PlanSpec(name or Path(path).stem, loaded[spec]))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise MoaError(f"plan names must differ, got {names}; name them NAME=PATH")
    return out


def _head_probe(fingerprint: ModelFingerprint, layer: int, head: int, sink: int, block: int) -> PlanSpec:
    """KV head ``(layer, head)`` dense, every other head the sink and one block."""
    shape = (fingerprint.num_layers, fingerprint.num_key_value_heads)
    if not (layer < shape[0] and head < shape[1]):
        raise MoaError(f"head:{layer}.{head} is not a KV head of this model ({shape[0]} layers x {shape[1]} KV heads)")
    alpha, beta = np.full(shape, float(block)), np.zeros(shape)
    alpha[layer, head], beta[layer, head] = 0.0, 1.0
    plan = Plan.from_arrays(fingerprint, alpha, beta, sink=sink, block=block)
    return PlanSpec(f"head-{layer}.{head}", plan)


def load_model(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """Model (SDPA attention, eval mode) and tokenizer from a local directory, offline.

    Raises:
        MoaError: if the directory is not a loadable model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise MoaError(f"{path}: not a model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            p, local_files_only=True, attn_implementation="sdpa", dtype=getattr(torch, dtype)
        )
    except (OSError, ValueError) as exc:
        raise MoaError(f"{path}: cannot load the model ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


class using_plan:  # noqa: N801 - used as a context manager like a function
    """Context manager: apply a plan to the model for the block, then remove it."""

    def __init__(self, model: Any, plan: Plan | None) -> None:
        self.model, self.plan = model, plan

    def __enter__(self) -> Any:
        if self.plan is not None:
            from moa_runtime import apply_plan

            apply_plan(self.model, self.plan)
        return self.model

    def __exit__(self, *exc: object) -> None:
        if self.plan is not None:
            from moa_runtime import remove_plan

            remove_plan(self.model)


def _chat_overhead(tokenizer: Any) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    import torch

    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, enc.input_ids.shape[1] :]
        answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    return answers


def retrieval_eval(
    model: Any,
    tokenizer: Any,
    plans: Sequence[PlanSpec],
    *,
    tasks: Sequence[str] = ("lines", "passkey"),
    lengths: Sequence[int],
    samples: int,
    seed: int = 1234,
    batch_size: int = 8,
    max_new_tokens: int = 6,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Greedy accuracy of each plan on each task, length and depth decile.

    Args:
        samples: Records per (task, length); record i asks at depth decile i % 10.

    Returns:
        Rows ``plan, task, length, decile, correct, total, accuracy, kv_density, mean_span``.
    """
    from moa_plan.tasks import generate, score, to_messages

    overhead = _chat_overhead(tokenizer)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    rows = []
    for task in tasks:
        for length in lengths:
            records = generate(task, samples, target_length=length, count_tokens=count, seed=seed, overhead=overhead)
            prompts = [
                tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False)
                for r in records
            ]
            n_total = length + max_new_tokens
            for spec in plans:
                if progress is not None:
                    progress(f"{spec.name} {task} N={length}")
                with using_plan(model, spec.plan):
                    answers = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
                by_decile: dict[int, list[float]] = {}
                for record, answer in zip(records, answers, strict=True):
                    decile = int(record.metadata.get("depth_decile", record.metadata.get("decile", 0)) or 0)
                    by_decile.setdefault(decile, []).append(score(record, _first_answer(answer, record)))
                plan = spec.plan
                for decile, scores in sorted(by_decile.items()):
                    rows.append(
                        {
                            "plan": spec.name,
                            "task": task,
                            "length": length,
                            "decile": decile,
                            "correct": int(sum(scores)),
                            "total": len(scores),
                            "accuracy": float(np.mean(scores)),
                            "kv_density": 1.0 if plan is None else plan.density(n_total),
                            "mean_span": float(n_total) if plan is None else float(plan.spans(n_total).mean()),
                        }
                    )
    return rows


def _token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 (SQuAD-style, case-folded, whitespace-split)."""
    from collections import Counter

    pred, ref = prediction.lower().split(), reference.lower().split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def task_eval(
    model: Any,
    tokenizer: Any,
    plans: Sequence[PlanSpec],
    records: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers of each plan to records of any task, scored against their reference answers.

    The prompt is ``context`` + newline + ``question`` as one user turn of the model's chat
    template (plain text if it has none). Scores per answer: ``exact`` (whitespace-normalised
    equality), ``contains`` (the reference appears in the answer) and word-overlap ``f1``.

    Returns:
        One row per (plan, record): ``plan, index, task, prompt_tokens, answer, reference,
        exact, contains, f1, kv_density``.

    Raises:
        MoaError: if a record has no reference answer or there are no records.
    """
    if not records:
        raise MoaError("no records to evaluate")
    for number, record in enumerate(records, start=1):
        if not (record.answer or "").strip():
            raise MoaError(f"record {number} ({record.task}) has no reference answer to score against")
    if getattr(tokenizer, "chat_template", None):
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{r.context}\n{r.question}".rstrip()}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in records
        ]
    else:
        prompts = [f"{r.context}\n{r.question}".rstrip() for r in records]
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    # Similar lengths share a batch (less padding); rows keep the records' order.
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    rows = []
    for spec in plans:
        if progress is not None:
            progress(f"{spec.name}: {len(records)} records")
        with using_plan(model, spec.plan):
            answers = _greedy(model, tokenizer, [prompts[i] for i in order], max_new_tokens, batch_size)
        by_index = dict(zip(order, answers, strict=True))
        for i, record in enumerate(records):
            answer, reference = " ".join(by_index[i].split()), " ".join((record.answer or "").split())
            n_total = lengths[i] + max_new_tokens
            rows.append(
                {
                    "plan": spec.name,
                    "index": i,
                    "task": record.task,
                    "prompt_tokens": lengths[i],
                    "answer": answer,
                    "reference": reference,
                    "exact": float(answer == reference),
                    "contains": float(reference in answer),
                    "f1": _token_f1(answer, reference),
                    "kv_density": 1.0 if spec.plan is None else spec.plan.density(n_total),
                }
            )
    return rows


def task_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, plan): mean exact / contains / F1, records, mean prompt tokens and KV density."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["plan"]), []).append(r)
    return [
        {
            "task": task,
            "plan": plan,
            "exact": float(np.mean([g["exact"] for g in group])),
            "contains": float(np.mean([g["contains"] for g in group])),
            "f1": float(np.mean([g["f1"] for g in group])),
            "records": len(group),
            "prompt_tokens": float(np.mean([g["prompt_tokens"] for g in group])),
            "kv_density": float(np.mean([g["kv_density"] for g in group])),
        }
        for (task, plan), group in cells.items()
    ]


def _first_answer(answer: str, record: Any) -> str:
    """The generated answer cut to as many words as the reference has (the model may go on talking)."""
    words = (record.answer or "").split()
    return " ".join(answer.split()[: len(words)])


def effective_context(rows: Sequence[dict[str, Any]], threshold: float = 0.9) -> dict[str, int | None]:
    """Per plan: the largest evaluated length whose accuracy (all tasks, all deciles) is >= threshold."""
    out: dict[str, int | None] = {}
    plans = sorted({r["plan"] for r in rows})
    for plan in plans:
        best = None
        for length in sorted({r["length"] for r in rows if r["plan"] == plan}):
            cell = [r for r in rows if r["plan"] == plan and r["length"] == length]
            acc = sum(r["correct"] for r in cell) / max(1, sum(r["total"] for r in cell))
            if acc >= threshold:
                best = length
        out[plan] = best
    return out


def answer_loss(model: Any, samples: Sequence[Any], *, batch_size: int = 4) -> float:
    """Mean cross-entropy over answer tokens of calibration samples (``input_ids``, answer span).

    Samples of one length are batched; the attention is whatever is applied to ``model``.
    """
    import torch

    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        width = max(len(s.input_ids) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, width - len(s.input_ids) :] = torch.tensor(s.input_ids)
            mask[i, width - len(s.input_ids) :] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        for i, s in enumerate(chunk):
            pad = width - len(s.input_ids)
            a, b = pad + s.answer_start, pad + s.answer_end
            loss = torch.nn.functional.cross_entropy(logits[i, a - 1 : b - 1], ids[i, a:b], reduction="sum")
            total += float(loss)
            count += b - a
    if count == 0:
        raise MoaError("the validation samples hold no answer tokens")
    value = total / count
    if not math.isfinite(value):
        raise MoaError("the validation loss is not finite")
    return value
