"""Deterministic generators of the synthetic long-context tasks.

Each generator returns `moa_plan.Record`s whose prompt (context, question and ``overhead``
template tokens) has ``target_length`` tokens of the caller's tokenizer, within one line
(one key-value line or one filler chunk). The tokenizer is only seen through ``count_tokens``,
so this module stays tokenizer-agnostic. Record ``i`` of a call depends only on ``(seed, i)``,
and its depth decile is ``i % 10`` (asked item in the ``[d/10, (d+1)/10)`` part of the context).

Task shapes (all words are single tokens of the reference tokenizer, see `moa_plan.tasks.vocab`):

- ``lines``: ``line <key> <value>`` lines, question ``what is line <key>``, answer
  ``<key> <value>`` (the answer restates the key: the value then directly follows its key, as in
  the context, which a two-layer model learns as plain induction).
- ``passkey``: Markov filler with ``remember the passkey <value> .`` at the chosen depth,
  question ``what is the passkey``, answer ``passkey <value>``.
- ``multikey``: filler with several ``remember magic <key> <value> .`` needles, question
  ``what is magic <key>`` about the needle at the chosen depth, answer ``<key> <value>``.
- ``local``: plain Markov text (no question) that stops where the next word is determined by the
  last two words; the answer is that word. Only local attention is needed.
- ``rewrite`` (calibration, not scored for acceptance): lines, question ``list the lines from
  <key>``, answer: that line and the following ones, rewritten without the first ``line`` word
  (``<key> <value> line <key2> <value2> ...``; a long-dependency generation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from moa_plan.errors import MoaError
from moa_plan.records import Record
from moa_plan.tasks.vocab import markov_chain, vocabulary

__all__ = [
    "CHAT_TASKS",
    "TASKS",
    "TaskError",
    "TokenCounter",
    "generate",
    "generate_lines",
    "generate_local",
    "generate_multikey",
    "generate_passkey",
    "generate_rewrite",
    "to_messages",
    "word_count",
]

TokenCounter = Callable[[str], int]
TASKS = ("lines", "passkey", "multikey", "local", "rewrite")
CHAT_TASKS = ("lines", "passkey", "multikey", "rewrite")
FILLER_CHUNK = 8
_MIN_ITEMS = 10


class TaskError(MoaError):
    """A task cannot be generated with the requested options."""


def word_count(text: str) -> int:
    """Tokens of ``text`` under the reference word-level tokenizer (whitespace-separated words)."""
    return len(text.split())


def to_messages(record: Record, system: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking a chat task's question: ``[system], user(context + question)``.

    Raises:
        TaskError: for a plain-text task (``local``), which is scored as a continuation.
    """
    if record.metadata.get("format") != "chat":
        raise TaskError(f"task {record.task!r} is a plain-text continuation, not a chat task")
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": f"{record.context}\n{record.question}"})
    return messages


def _rng(seed: int, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASKS.index(task), index])


def _fit(pieces: Sequence[str], budget: int, count_tokens: TokenCounter) -> int:
    """How many leading pieces fit in ``budget`` tokens (summing per-piece counts)."""
    total = 0
    for n, piece in enumerate(pieces):
        total += count_tokens(piece)
        if total > budget:
            return n
    return len(pieces)


def _check(target_length: int, overhead: int, n: int) -> None:
    if target_length <= overhead + 16:
        raise TaskError(f"target length {target_length} is too short for a task prompt")
    if n < 1:
        raise TaskError(f"number of records must be positive, got {n}")


def _depth_index(rng: np.random.Generator, decile: int, count: int) -> int:
    lo = decile * count // 10
    hi = max(lo + 1, (decile + 1) * count // 10)
    return int(rng.integers(lo, hi))


def _meta(task: str, seed: int, index: int, target: int, decile: int | None, **extra: object) -> dict:
    meta = {"task": task, "seed": seed, "index": index, "target_length": target, "format": "chat"}
    if decile is not None:
        meta["depth_decile"] = decile
    meta.update(extra)
    return meta


def _lines_context(
    rng: np.random.Generator, budget: int, count_tokens: TokenCounter
) -> tuple[list[str], list[str], list[str]]:
    vocab = vocabulary()
    per_line = count_tokens(f"line {vocab.keys[0]} {vocab.values[0]}")
    cap = min(len(vocab.keys), budget // max(per_line, 1) + 4)
    keys = [vocab.keys[i] for i in rng.permutation(len(vocab.keys))[:cap]]
    values = [vocab.values[i] for i in rng.integers(0, len(vocab.values), size=cap)]
    lines = [f"line {k} {v}" for k, v in zip(keys, values, strict=True)]
    n = _fit(lines, budget, count_tokens)
    if n == cap and cap == len(vocab.keys):
        raise TaskError(f"a lines context of {budget} tokens needs more than {len(vocab.keys)} distinct keys")
    if n < _MIN_ITEMS:
        raise TaskError(f"a lines context of {budget} tokens holds fewer than {_MIN_ITEMS} lines")
    return lines[:n], keys[:n], values[:n]


def generate_lines(
    n: int, *, target_length: int, count_tokens: TokenCounter = word_count, seed: int = 0, overhead: int = 0
) -> list[Record]:
    """Lines retrieval: ``line <key> <value>`` lines, one key asked at the end.

    Args:
        n: Number of records; record ``i`` asks a line in depth decile ``i % 10``.
        target_length: Prompt tokens (context + question + ``overhead``), hit within one line.
        count_tokens: Token counter of the tokenizer in use.
        seed: Seed; equal seeds give equal records.
        overhead: Tokens the chat template adds around context and question.
    """
    _check(target_length, overhead, n)
    records = []
    for i in range(n):
        rng = _rng(seed, "lines", i)
        question_probe = count_tokens(f"what is line {vocabulary().keys[0]}")
        lines, keys, values = _lines_context(rng, target_length - overhead - question_probe, count_tokens)
        decile = i % 10
        j = _depth_index(rng, decile, len(lines))
        meta = _meta("lines", seed, i, target_length, decile, num_lines=len(lines), line_index=j, key=keys[j])
        context = "\n".join(lines)
        records.append(
            Record(
                task="lines",
                context=context,
                question=f"what is line {keys[j]}",
                answer=f"{keys[j]} {values[j]}",
                metadata=meta,
            )
        )
    return records


def _filler_chunks(rng: np.random.Generator, budget: int, count_tokens: TokenCounter) -> list[str]:
    chain = markov_chain()
    per_chunk = max(count_tokens(" ".join(chain.words[:FILLER_CHUNK])), 1)
    words = chain.sample((budget // per_chunk + 2) * FILLER_CHUNK, rng)
    chunks = [" ".join(chain.words[w] for w in words[s : s + FILLER_CHUNK]) for s in range(0, len(words), FILLER_CHUNK)]
    return chunks


def _needle_context(
    rng: np.random.Generator, needles: list[str], budget: int, count_tokens: TokenCounter
) -> tuple[list[str], list[int]]:
    """Filler chunks with ``needles`` inserted at random chunk boundaries; returns pieces, needle slots."""
    need = sum(count_tokens(x) for x in needles)
    chunks = _filler_chunks(rng, budget - need, count_tokens)
    chunks = chunks[: _fit(chunks, budget - need, count_tokens)]
    if len(chunks) < _MIN_ITEMS:
        raise TaskError(f"a filler context of {budget} tokens holds fewer than {_MIN_ITEMS} chunks")
    return chunks, []


def _insert(chunks: list[str], placed: list[tuple[int, str]]) -> tuple[list[str], dict[int, int]]:
    """Insert ``(slot, piece)`` items before chunk ``slot``; returns pieces and item -> piece index."""
    order = sorted(range(len(placed)), key=lambda k: (placed[k][0], k))
    pieces: list[str] = []
    where: dict[int, int] = {}
    nxt = 0
    for slot in range(len(chunks) + 1):
        while nxt < len(order) and placed[order[nxt]][0] == slot:
            where[order[nxt]] = len(pieces)
            pieces.append(placed[order[nxt]][1])
            nxt += 1
        if slot < len(chunks):
            pieces.append(chunks[slot])
    return pieces, where


def generate_passkey(
    n: int, *, target_length: int, count_tokens: TokenCounter = word_count, seed: int = 0, overhead: int = 0
) -> list[Record]:
    """Passkey retrieval: a five-digit passkey at the chosen depth of Markov filler text.

    Args: as `generate_lines`; a "line" here is a filler chunk of 8 words.
    """
    _check(target_length, overhead, n)
    vocab = vocabulary()
    question = "what is the passkey"
    records = []
    for i in range(n):
        rng = _rng(seed, "passkey", i)
        value = vocab.values[int(rng.integers(len(vocab.values)))]
        needle = f"remember the passkey {value} ."
        budget = target_length - overhead - count_tokens(question)
        chunks, _ = _needle_context(rng, [needle], budget, count_tokens)
        decile = i % 10
        slot = _depth_index(rng, decile, len(chunks) + 1)
        pieces, _ = _insert(chunks, [(slot, needle)])
        meta = _meta("passkey", seed, i, target_length, decile, needle_chunk=slot, num_chunks=len(chunks))
        records.append(
            Record(
                task="passkey", context="\n".join(pieces), question=question, answer=f"passkey {value}", metadata=meta
            )
        )
    return records


def generate_multikey(
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    num_needles: int = 4,
) -> list[Record]:
    """Multi-key needle retrieval (RULER style): several ``magic <key> <value>`` needles in filler.

    Args: as `generate_lines`, plus ``num_needles`` (>= 2), the needles in each context; the
        asked needle sits in the record's depth decile, the others anywhere.
    """
    _check(target_length, overhead, n)
    if num_needles < 2:
        raise TaskError(f"multikey needs at least 2 needles, got {num_needles}")
    vocab = vocabulary()
    records = []
    for i in range(n):
        rng = _rng(seed, "multikey", i)
        keys = [vocab.keys[k] for k in rng.choice(len(vocab.keys), num_needles, replace=False)]
        values = [vocab.values[v] for v in rng.integers(0, len(vocab.values), size=num_needles)]
        needles = [f"remember magic {k} {v} ." for k, v in zip(keys, values, strict=True)]
        question = f"what is magic {keys[0]}"
        chunks, _ = _needle_context(rng, needles, target_length - overhead - count_tokens(question), count_tokens)
        decile = i % 10
        slots = [_depth_index(rng, decile, len(chunks) + 1)] + [
            int(s) for s in rng.integers(0, len(chunks) + 1, size=num_needles - 1)
        ]
        pieces, _ = _insert(chunks, list(zip(slots, needles, strict=True)))
        meta = _meta("multikey", seed, i, target_length, decile, num_needles=num_needles, key=keys[0])
        records.append(
            Record(
                task="multikey",
                context="\n".join(pieces),
                question=question,
                answer=f"{keys[0]} {values[0]}",
                metadata=meta,
            )
        )
    return records


def generate_local(
    n: int, *, target_length: int, count_tokens: TokenCounter = word_count, seed: int = 0, overhead: int = 0
) -> list[Record]:
    """Local text: Markov-chain text ending in a deterministic state; the answer is the next word.

    No question: the prompt is the context alone (``metadata["format"] == "plain"``), scored as
    a continuation. Args: as `generate_lines` (a "line" is one word here, the text is cut
    exactly where the budget allows and then back to the nearest deterministic state).
    """
    _check(target_length, overhead, n)
    chain = markov_chain()
    records = []
    for i in range(n):
        rng = _rng(seed, "local", i)
        budget = target_length - overhead
        per_word = max(count_tokens(chain.words[0]), 1)
        words = chain.sample(budget // per_word + 64, rng)
        end = min(budget // per_word, len(words) - 1)
        while end > 2 and not chain.is_deterministic(words[end - 2], words[end - 1]):
            end -= 1
        text = [chain.words[w] for w in words[:end]]
        meta = _meta("local", seed, i, target_length, None, num_words=end)
        meta["format"] = "plain"
        records.append(Record(task="local", context=" ".join(text), answer=chain.words[words[end]], metadata=meta))
    return records


def generate_rewrite(
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    num_rewrite: int = 4,
) -> list[Record]:
    """Calibration generation: rewrite the line with the asked key and the ``num_rewrite - 1`` after it.

    The answer (``line k v line k' v' ...``) is long-dependency text for profiling; it is not an
    evaluation task. Args: as `generate_lines`, plus ``num_rewrite`` lines to rewrite.
    """
    _check(target_length, overhead, n)
    if num_rewrite < 1:
        raise TaskError(f"num_rewrite must be positive, got {num_rewrite}")
    records = []
    for i in range(n):
        rng = _rng(seed, "rewrite", i)
        probe = count_tokens(f"list the lines from {vocabulary().keys[0]}")
        lines, keys, _ = _lines_context(rng, target_length - overhead - probe, count_tokens)
        decile = i % 10
        j = min(_depth_index(rng, decile, len(lines)), len(lines) - num_rewrite)
        meta = _meta("rewrite", seed, i, target_length, decile, num_lines=len(lines), line_index=j, key=keys[j])
        answer = " ".join(lines[j : j + num_rewrite]).removeprefix("line ")
        question = f"list the lines from {keys[j]}"
        records.append(
            Record(task="rewrite", context="\n".join(lines), question=question, answer=answer, metadata=meta)
        )
    return records


_GENERATORS: dict[str, Callable[..., list[Record]]] = {
    "lines": generate_lines,
    "passkey": generate_passkey,
    "multikey": generate_multikey,
    "local": generate_local,
    "rewrite": generate_rewrite,
}


def generate(
    task: str,
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    form: str | None = None,
    essays: Mapping[str, str] | None = None,
    **options: int,
) -> list[Record]:
    """Generate ``n`` records of ``task``: a toy task of `TASKS` or an English task.

    The English tasks (`moa_plan.tasks.english.ENGLISH_TASKS`: ``niah``, ``niah-multi``,
    ``passkey-en``, ``lines-en``, ``summary``, ``essay-ppl``) take ``form`` and ``essays``, see
    `moa_plan.tasks.english.generate_english`; so do the calibration tasks ``facts``,
    ``quotes``, ``items`` and ``codes`` (`moa_plan.tasks.facts`, completion form only); the toy tasks take neither (their form is fixed).

    Raises:
        TaskError: for an unknown task or options the task cannot satisfy.
    """
    from moa_plan.tasks.english import ENGLISH_TASKS, generate_english
    from moa_plan.tasks.facts import RECALL_TASKS, generate_recall

    if task in RECALL_TASKS:
        if form not in (None, "completion"):
            raise TaskError(f"task {task!r} has only the completion form, not {form!r}")
        if task == "facts" and "facts" in options:
            options["lines"] = options.pop("facts")
        if set(options) - {"lines"}:
            raise TaskError(f"bad option for task {task!r}: {', '.join(sorted(set(options) - {'lines'}))}")
        return generate_recall(
            task,
            n,
            target_length=target_length,
            count_tokens=count_tokens,
            seed=seed,
            overhead=overhead,
            essays=essays,
            **options,
        )
    if task in ENGLISH_TASKS:
        if options:
            raise TaskError(f"bad option for task {task!r}: {', '.join(sorted(options))}")
        return generate_english(
            task,
            n,
            target_length=target_length,
            count_tokens=count_tokens,
            seed=seed,
            overhead=overhead,
            form=form,
            essays=essays,
        )
    if task not in _GENERATORS:
        raise TaskError(f"unknown task {task!r}; expected one of {', '.join((*TASKS, *ENGLISH_TASKS, *RECALL_TASKS))}")
    if form is not None or essays is not None:
        raise TaskError(f"toy task {task!r} takes no form or essays (its form is fixed)")
    try:
        return _GENERATORS[task](
            n, target_length=target_length, count_tokens=count_tokens, seed=seed, overhead=overhead, **options
        )
    except TypeError as exc:
        raise TaskError(f"bad option for task {task!r}: {exc}") from None
