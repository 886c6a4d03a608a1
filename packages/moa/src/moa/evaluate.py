"""Evaluation of plans side by side: retrieval accuracy by length x depth, and answer-token loss.

``dense`` runs the unmodified model (SDPA); every other plan runs through moa-runtime with its
own per-head cache, so what is measured is what a user would serve.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moa_plan import MoaError, ModelFingerprint, Plan

__all__ = [
    "CellStore",
    "PlanSpec",
    "answer_loss",
    "effective_context",
    "effective_context_table",
    "essay_perplexity",
    "essay_texts",
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
    """Plans from ``dense``, ``uniform:F``, ``window:T``, ``head:L.H``, ``heads`` or ``NAME=PATH`` / ``PATH`` specs.

    ``uniform:F`` gives every head the same elastic rule ``(0, F)`` (a window of F x N); ``window:T``
    every head the same fixed window of T tokens, sink included, at every length (StreamingLLM's
    fixed cache size).

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
        if spec not in ("dense", "heads") and not spec.startswith(("uniform:", "window:", "head:")):
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
        elif spec.startswith("window:"):
            tokens = spec.split(":", 1)[1]
            if not tokens.isdigit() or int(tokens) < 1:
                raise MoaError(f"plan spec {spec!r}: expected window:TOKENS with a positive whole number")
            plan = Plan.window(fingerprint, int(tokens), sink=sink, block=block)
            out.append(PlanSpec(f"window-{int(tokens)}", plan))
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
    """Model (SDPA attention, eval mode) and tokenizer from a model directory or a ``.gguf`` file, offline.

    Raises:
        MoaError: if the path is not a loadable model (see `moa_runtime.load_model`).
    """
    from moa_runtime.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, dtype=dtype, attn_implementation="sdpa")
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


def _special_overhead(tokenizer: Any) -> int:
    """Tokens the tokenizer adds to plain text itself (a BOS, for many models)."""
    return len(tokenizer("a").input_ids) - len(tokenizer("a", add_special_tokens=False).input_ids)


def _greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = False,
) -> list[str]:
    import torch

    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special_tokens,
        )
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, enc.input_ids.shape[1] :]
        answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    return answers


# New tokens of an answer per English retrieval task (the prompt already holds the answer's start).
ANSWER_TOKENS = {"niah": 16, "niah-multi": 24, "passkey-en": 8, "lines-en": 8}
_TOY_ANSWER_TOKENS = 6


def _prompts(records: Sequence[Any], tokenizer: Any, form: str) -> list[str]:
    """Completion form: plain text (the tokenizer adds BOS as it does); chat form: the chat template."""
    from moa_plan.tasks import completion_prompt, to_messages

    if form == "completion":
        return [completion_prompt(r) for r in records]
    return [tokenizer.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False) for r in records]


def _decile_rows(
    spec: PlanSpec, task: str, form: str, length: int, records: Sequence[Any], scores: Sequence[float], n_total: int
) -> list[dict[str, Any]]:
    by_decile: dict[int, list[tuple[float, float]]] = {}
    for record, value in zip(records, scores, strict=True):
        decile = int(record.metadata.get("depth_decile", record.metadata.get("decile", 0)) or 0)
        # Toy tasks ask in [d/10, (d+1)/10) of the context: their depth is the decile's middle.
        depth = float(record.metadata.get("depth_percent", 10 * decile + 5))  # type: ignore[arg-type]
        by_decile.setdefault(decile, []).append((value, depth))
    plan = spec.plan
    rows = []
    for decile, cell in sorted(by_decile.items()):
        values = [v for v, _ in cell]
        correct = sum(v == 1.0 for v in values)
        rows.append(
            {
                "plan": spec.name,
                "task": task,
                "form": form,
                "length": length,
                "decile": decile,
                "depth_percent": float(np.mean([d for _, d in cell])),
                "correct": int(correct),
                "total": len(values),
                "accuracy": correct / len(values),
                "score": float(np.mean(values)),
                "kv_density": 1.0 if plan is None else plan.density(n_total),
                "mean_span": float(n_total) if plan is None else float(plan.spans(n_total).mean()),
            }
        )
    return rows


def retrieval_prompts(
    tokenizer: Any,
    task: str,
    length: int,
    samples: int,
    *,
    form: str = "completion",
    seed: int = 1234,
    essays: Mapping[str, str] | None = None,
) -> tuple[list[Any], list[str]]:
    """The records and prompt texts `retrieval_eval` scores for one task and length (``form`` as it resolves it).

    Records of ``max(samples, 10)`` are drawn and `spread_records` picks ``samples`` of them; English tasks
    fit ``length`` tokens with the BOS (completion form) or the chat template's tokens (chat form) counted.
    """
    from moa_plan.tasks import RETRIEVAL_TASKS, generate

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    overhead = _special_overhead(tokenizer) if form == "completion" else _chat_overhead(tokenizer)
    options: dict[str, Any] = {"form": form, "essays": essays} if task in RETRIEVAL_TASKS else {}
    records = generate(
        task, max(samples, 10), target_length=length, count_tokens=count, seed=seed, overhead=overhead, **options
    )
    records = [records[i] for i in spread_records(samples)]
    return records, _prompts(records, tokenizer, form)


def spread_records(samples: int) -> list[int]:
    """Indices of the records to evaluate: all of ``range(samples)`` from ten on; below ten, one record of
    each of ``samples`` depth deciles spread over the ten (record i of a call sits at decile i % 10)."""
    if samples >= 10:
        return list(range(samples))
    return [min(9, (2 * i + 1) * 10 // (2 * samples)) for i in range(samples)]


class CellStore:
    """The finished (plan, task, length) cells of a retrieval run, kept in a JSON file after each cell.

    An interrupted `retrieval_eval` (a long run at 8k is hours on a CPU) resumes where it stopped:
    a cell whose key (plan name and rules, task, length) is in the file is read back instead of
    measured again. ``settings`` (samples, seed, model, ...) are stored with the cells; a file
    written under other settings is set aside with a warning and its cells are measured anew.
    """

    def __init__(self, path: Path, settings: Mapping[str, Any], merge: Sequence[Path] = ()) -> None:
        """``merge``: other cell files (the shards of a run split over processes) whose cells are read too
        and written at once, with those of ``path``, to ``path``."""
        self.path, self.settings = path, json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
        self.cells: dict[str, list[dict[str, Any]]] = {}
        merged = False
        for source in [path, *merge]:
            if not source.is_file():
                continue
            try:
                data = json.loads(source.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("settings") == self.settings:
                self.cells.update(data.get("cells", {}))
                merged = merged or source != path
            else:
                logger.warning("ignoring %s: it was written by a run with other settings", source)
        if merged:
            self._write()

    @staticmethod
    def key(spec: PlanSpec, task: str, length: int) -> str:
        rules = "dense" if spec.plan is None else spec.plan.model_dump_json(include={"sink", "block", "rules"})
        return f"{spec.name}|{hashlib.sha256(rules.encode()).hexdigest()[:16]}|{task}|{length}"

    def get(self, key: str) -> list[dict[str, Any]] | None:
        return self.cells.get(key)

    def put(self, key: str, rows: list[dict[str, Any]]) -> None:
        self.cells[key] = rows
        self._write()

    def _write(self) -> None:
        from moa_plan import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"settings": self.settings, "cells": self.cells}))


class CellClaims:
    """Which of several processes sharing one retrieval run (`--shard K/N`) measures which cell.

    Each process walks the same cells, longest prompts first; the first to create a cell's claim
    file (``O_EXCL``, atomic on a local file system) measures it, the others move on. So a process
    that finishes its cell early takes the next one instead of waiting on a share fixed in advance
    (the static split by index left one of two cores idle for the last 27 min of a 3.5 h table).
    A claim records its host and process id, and ``done`` once the cell is kept; a claim whose
    process has died unfinished (a killed run, resumed) is taken over. The run without ``--shard``
    reads every shard's cells back and measures any cell still missing itself.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.me = f"{socket.gethostname()} {os.getpid()}"

    def _path(self, key: str) -> Path:
        return self.dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.claim"

    def claim(self, key: str) -> bool:
        """True if this process should measure the cell (it now holds the claim)."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return self._take_over(path)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{self.me} running")
        return True

    def done(self, key: str) -> None:
        """Mark the cell kept, so that no later process takes its claim over."""
        from moa_plan import atomic_write_text

        atomic_write_text(self._path(key), f"{self.me} done")

    def _take_over(self, path: Path) -> bool:
        from moa_plan import atomic_write_text

        try:
            host, pid, state = path.read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            return False  # being written right now by the process that created it
        if state == "done" or host != socket.gethostname() or f"{host} {pid}" == self.me or _alive(int(pid)):
            return False
        logger.info("taking over %s from process %s, which stopped before finishing it", path.name, pid)
        atomic_write_text(path, f"{self.me} running")
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    max_new_tokens: int | None = None,
    form: str | None = None,
    essays: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    store: CellStore | None = None,
    claims: CellClaims | None = None,
) -> list[dict[str, Any]]:
    """Greedy accuracy of each plan on each task, length and depth decile.

    Args:
        tasks: Toy tasks (`moa_plan.tasks.TASKS`, always in chat form) and English retrieval
            tasks (``niah``, ``niah-multi``, ``passkey-en``, ``lines-en``).
        samples: Records per (task, length); record i asks at depth decile i % 10. Fewer than ten samples
            take records of the first ten spread over the depths (`spread_records`; 5: deciles 1, 3, 5, 7,
            9), never the first few, which would all sit in the first half of the context.
        max_new_tokens: New tokens per answer; default 6 for toy tasks, `ANSWER_TOKENS` for English ones.
        form: ``completion`` (default) or ``chat`` for the English tasks. Completion prompts are
            plain text, context + question ending with the start of the answer, no chat template,
            BOS as the tokenizer adds it; the score is on the generated continuation.
        essays: Every essay for niah / niah-multi (their evaluation split is used); default the
            assets cache.
        store: Finished cells to read back instead of measuring, and where each new cell is kept
            (`CellStore`); the caller makes its settings match these arguments.
        claims: Share the run with other processes (`CellClaims`): cells are taken longest prompt first,
            each measured by the process that claims it, and kept in this process's own store; a run
            without claims and the stores merged (`CellStore` ``merge``) then reads them all back.
            Rows come back only for the cells this process measured or read back.

    Returns:
        Rows ``plan, task, form, length, decile, depth_percent, correct, total, accuracy, score,
        kv_density, mean_span``: ``correct`` counts records scored 1.0, ``score`` is the mean
        per-record score (the keyword recall of niah-multi; the accuracy elsewhere).

    Raises:
        MoaError: for an unknown form or a task that is not a retrieval task.
    """
    from moa_plan.tasks import FORMS, RETRIEVAL_TASKS, TASKS, score

    if form is not None and form not in FORMS:
        raise MoaError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    for task in tasks:
        if task not in TASKS + RETRIEVAL_TASKS:
            raise MoaError(f"{task!r} is not a retrieval task; expected one of {', '.join(TASKS + RETRIEVAL_TASKS)}")

    groups = [(task, length) for task in tasks for length in lengths]
    if claims is not None:
        # Longest prompts first: the last cells left to share out are then the short ones.
        groups.sort(key=lambda group: -group[1])
    rows = []
    for task, length in groups:
        english = task in RETRIEVAL_TASKS
        task_form = (form or "completion") if english else "chat"
        new_tokens = max_new_tokens or (ANSWER_TOKENS[task] if english else _TOY_ANSWER_TOKENS)
        prompts: list[Any] | None = None
        records: list[Any] = []
        for spec in plans:
            key = CellStore.key(spec, task, length)
            kept = store.get(key) if store is not None else None
            if kept is not None:
                if progress is not None:
                    progress(f"{spec.name} {task} N={length}: read back from {store.path}")  # type: ignore[union-attr]
                rows += kept
                continue
            if claims is not None and not claims.claim(key):
                continue
            if prompts is None:
                records, prompts = retrieval_prompts(
                    tokenizer, task, length, samples, form=task_form, seed=seed, essays=essays
                )
            if progress is not None:
                progress(f"{spec.name} {task} N={length}")
            with using_plan(model, spec.plan):
                answers = _greedy(
                    model, tokenizer, prompts, new_tokens, batch_size, add_special_tokens=task_form == "completion"
                )
            scores = [score(r, a if english else _first_answer(a, r)) for r, a in zip(records, answers, strict=True)]
            cell = _decile_rows(spec, task, task_form, length, records, scores, length + new_tokens)
            if store is not None:
                store.put(key, cell)
            if claims is not None:
                claims.done(key)
            rows += cell
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


def effective_context_table(rows: Sequence[dict[str, Any]], threshold: float = 0.9) -> list[dict[str, Any]]:
    """Per plan, per task and over all tasks (``task == "all"``): the effective context length.

    The effective length is the largest evaluated length whose accuracy is >= ``threshold``
    (None if none is), with the plan's mean span and KV density at that length.

    Returns:
        Rows ``plan, task, effective_length, mean_span, kv_density`` (span and density None with the length).
    """
    out = []
    for plan in sorted({r["plan"] for r in rows}):
        mine = [r for r in rows if r["plan"] == plan]
        for task in [*sorted({r["task"] for r in mine}), "all"]:
            cells = [r for r in mine if task in ("all", r["task"])]
            best = effective_context(cells, threshold)[plan]
            at = [r for r in cells if r["length"] == best]
            out.append(
                {
                    "plan": plan,
                    "task": task,
                    "effective_length": best,
                    "mean_span": float(np.mean([r["mean_span"] for r in at])) if at else None,
                    "kv_density": float(np.mean([r["kv_density"] for r in at])) if at else None,
                }
            )
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
        # Logits only from the first answer's predicting position on: the vocabulary projection of the
        # context (a fifth of a small model's forward at 4k) is never built.
        first = min(width - len(s.input_ids) + s.answer_start for s in chunk) - 1
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=width - first)
            logits = out.logits.float()
        for i, s in enumerate(chunk):
            pad = width - len(s.input_ids)
            a, b = pad + s.answer_start, pad + s.answer_end
            loss = torch.nn.functional.cross_entropy(
                logits[i, a - 1 - first : b - 1 - first], ids[i, a:b], reduction="sum"
            )
            total += float(loss)
            count += b - a
    if count == 0:
        raise MoaError("the validation samples hold no answer tokens")
    value = total / count
    if not math.isfinite(value):
        raise MoaError("the validation loss is not finite")
    return value


def _text_loss(model: Any, ids: Any, chunk: int = 1024) -> float:
    """Summed next-token cross-entropy over all tokens of one sequence ``ids`` ``[1, T]``.

    The output projection runs on ``chunk`` positions at a time, so the ``[T, vocab]`` logits of
    a long text never exist at once.
    """
    import torch

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        if decoder is None or head is None:
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        total = 0.0
        for start in range(0, hidden.shape[0], chunk):
            logits = head(hidden[start : start + chunk]).float()
            target = ids[0, start + 1 : start + 1 + chunk]
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    return total


def essay_texts(
    tokenizer: Any,
    essays: Mapping[str, str],
    lengths: Sequence[int],
    samples: int,
    *,
    seed: int = 1234,
    side: str = "evaluation",
) -> dict[int, list[str]]:
    """``{length: texts}`` of whole essays cut to each length in the tokenizer's tokens (its BOS counted).

    ``essays`` is `moa_plan.assets.read_essays` (read it before loading a model: a missing cache then fails
    first); ``side="calibration"`` takes the calibration essays (to choose by), ``"evaluation"`` the held-out
    ones (to report).
    """
    from moa_plan.tasks import essay_ppl_texts

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    overhead = len(tokenizer("a").input_ids) - count("a")
    return {n: essay_ppl_texts(samples, n, count, seed, essays=essays, overhead=overhead, side=side) for n in lengths}


def essay_perplexity(
    model: Any,
    tokenizer: Any,
    plans: Sequence[PlanSpec],
    texts: Mapping[int, Sequence[str]],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Perplexity over all tokens of held-out texts, per plan and length; N of a plan is the text length.

    Args:
        texts: ``{length: texts}`` (e.g. `moa_plan.tasks.essay_ppl_texts` at each length); each text
            is tokenized with the tokenizer's own special tokens and scored alone (no padding).

    Returns:
        Rows ``plan, length, loss, ppl, samples, tokens, kv_density, mean_span``; ``tokens`` is the
        mean text length, loss the mean cross-entropy per predicted token.

    Raises:
        MoaError: if a text has fewer than two tokens or the loss is not finite.
    """
    encoded = {n: [tokenizer(t, return_tensors="pt").input_ids for t in group] for n, group in texts.items()}
    for n, group in encoded.items():
        if any(ids.shape[1] < 2 for ids in group) or not group:
            raise MoaError(f"the perplexity texts of length {n} need at least two tokens each")
    rows = []
    for spec in plans:
        with using_plan(model, spec.plan):
            for n, group in encoded.items():
                if progress is not None:
                    progress(f"{spec.name} ppl N={n}")
                total = sum(_text_loss(model, ids) for ids in group)
                count = sum(ids.shape[1] - 1 for ids in group)
                sizes = [ids.shape[1] for ids in group]
                loss = total / count
                if not math.isfinite(loss):
                    raise MoaError(f"the perplexity of plan {spec.name} at length {n} is not finite")
                plan = spec.plan
                rows.append(
                    {
                        "plan": spec.name,
                        "length": n,
                        "loss": loss,
                        "ppl": math.exp(loss),
                        "samples": len(group),
                        "tokens": float(np.mean(sizes)),
                        "kv_density": 1.0 if plan is None else float(np.mean([plan.density(t) for t in sizes])),
                        "mean_span": float(np.mean(sizes))
                        if plan is None
                        else float(np.mean([plan.spans(t).mean() for t in sizes])),
                    }
                )
    return rows
