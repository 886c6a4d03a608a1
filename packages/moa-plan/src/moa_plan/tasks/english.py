"""Real-language long-context tasks in their original wordings, beside the toy-vocabulary ones.

Pure Python + numpy; the tokenizer is only seen through ``count_tokens``, as in
`moa_plan.tasks.generators`. The haystack is Paul Graham's essays (the original Needle In A
Haystack corpus, `moa_plan.assets.read_essays`), split once into a calibration and an evaluation
part by `essay_split`, so that no plan is graded on text it was calibrated on.

| task | what | answer / scorer | forms |
| --- | --- | --- | --- |
| ``niah`` | the original needle (`moa_plan.assets.NEEDLE`) at a depth of evaluation essays | keywords "sandwich" and "dolores park" | completion, chat |
| ``niah-multi`` | the three LangChain pizza needles, spread from the depth to the end | fraction of figs / prosciutto / goat cheese | completion, chat |
| ``passkey-en`` | Mohtashami & Jaggi / LongLoRA passkey: "The pass key is NNNNN." in grass/sky/sun filler | first number = key | completion, chat |
| ``lines-en`` | LongEval lines: ``line <word-word>: REGISTER_CONTENT is <N>`` | first number = value | completion, chat |
| ``summary`` | calibration essays, "Summarize the essay above." | none (the model writes it) | chat |
| ``essay-ppl`` | whole evaluation essays cut to a length, for perplexity | none | plain |
| ``continue`` | calibration essays, one sentence past the length; the prose that follows is the answer | the next sentences (reference) | plain |

Record ``i`` of a call depends only on ``(seed, i)``; retrieval records put the needle (or the
asked line) at ``depth_percent = (i % 10) / 9 * 100`` (the original's ten depths 0..100%) and
carry ``depth_decile = i % 10``. The needle goes in at a sentence boundary at or before that depth,
as the original does, each needle on its own line. The prompt (context, question and ``overhead``
template tokens) has at most ``target_length`` tokens and misses it by less than one sentence
(one filler sentence, one line); lengths are checked on the whole rendered prompt.

**Completion form** (the default of the retrieval tasks): the prompt is plain text,
`completion_prompt(record)` = context + blank line (one newline for passkey-en and lines-en, as
in their originals) + question, and the question ends with the start of the answer ("... The
best thing to do in San Francisco is"); the answer is the rest. **Chat form**: context and the
plain question are one user turn (``metadata["format"] == "chat"``, `to_messages` renders it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from moa_plan.assets import NEEDLE, NEEDLE_QUESTION, NEEDLE_RETRIEVAL, read_essays
from moa_plan.records import Record
from moa_plan.tasks.generators import TaskError, TokenCounter, word_count
from moa_plan.tasks.haystack import (
    CALIBRATION_FRACTION,
    Haystack,
    depth_boundary,
    essay_split,
    largest_fitting,
    splice,
    split_sentences,
)

__all__ = [
    "CALIBRATION_FRACTION",
    "ENGLISH_TASKS",
    "FORMS",
    "PIZZA_NEEDLES",
    "RETRIEVAL_TASKS",
    "completion_prompt",
    "essay_ppl_texts",
    "essay_split",
    "generate_english",
    "split_sentences",
]

ENGLISH_TASKS = ("niah", "niah-multi", "passkey-en", "lines-en", "summary", "essay-ppl", "continue")
# Tokens of prose, at least, that a ``continue`` record keeps after its context as the answer.
CONTINUE_ANSWER_TOKENS = 96
RETRIEVAL_TASKS = ("niah", "niah-multi", "passkey-en", "lines-en")
FORMS = ("completion", "chat")
_MIN_ITEMS = 10

NIAH_ANSWER = NEEDLE.removeprefix(NEEDLE_RETRIEVAL).strip()
NIAH_KEYWORDS = ("sandwich", "dolores park")
PIZZA_NEEDLES = (
    "Figs are one of the secret ingredients needed to build the perfect pizza.",
    "Prosciutto is one of the secret ingredients needed to build the perfect pizza.",
    "Goat cheese is one of the secret ingredients needed to build the perfect pizza.",
)
PIZZA_QUESTION = "What are the secret ingredients needed to build the perfect pizza?"
PIZZA_RETRIEVAL = "The secret ingredients needed to build the perfect pizza are"
PIZZA_ANSWER = "figs, prosciutto, and goat cheese."
PIZZA_KEYWORDS = ("figs", "prosciutto", "goat cheese")
PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
PASSKEY_QUESTION = "What is the pass key?"
PASSKEY_RETRIEVAL = "The pass key is"
LINES_INTRO = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
    "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
    "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
    "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n"
)
SUMMARY_QUESTION = "Summarize the essay above."

# Line indices of lines-en are "<adjective>-<noun>", as in LongEval ("righteous-ethernet").
_ADJECTIVES = """able absurd active agile ancient angry arctic awake bitter blazing bold brave breezy bright
brisk calm candid careful cheerful chilly clever cloudy cosmic crimson curious daring dazzling decent
deep eager early earnest electric elegant empty endless fearless fierce fiery fluffy formal fragile
frozen gentle giant gifted glad gleaming golden graceful grand happy hidden hollow honest humble icy
idle jolly keen kind lively lonely loyal lucky lunar magic mellow mighty modern modest muddy narrow
nimble noble odd patient peaceful plain polite proud purple quiet rapid rare restless righteous rocky
royal rustic sacred sandy scarlet secret serene shiny silent silver simple sleepy smooth snowy solar
solid sparkling spicy steady stormy sturdy sunny swift tender tidy tiny tranquil vast velvet vivid
wandering warm wild windy wise witty wooden young zealous""".split()  # noqa: SIM905 (a word list)
_NOUNS = """anchor antenna apple arrow atlas badge bakery balloon banjo barrel beacon bicycle blanket
bridge bucket buffalo button cabin cactus camera canal candle canyon carpet castle cello chimney
circuit cliff clock comet compass cookie copper cottage crystal dagger desert diamond dolphin dragon
drum eagle ember engine ethernet falcon feather ferry fiddle forest fountain galaxy garden glacier
goblet granite guitar hammer harbor helmet hive horizon island jacket jungle kettle kite ladder
lagoon lantern lemon library lighthouse magnet maple marble meadow mirror monsoon mountain needle
oasis orchard otter paddle palace pebble pencil pepper piano pigeon planet pocket prism puzzle quartz
rabbit radar raven ribbon river rocket saddle sapphire satellite scarf shadow shovel signal spider
spiral sponge squirrel stadium statue summit teapot temple thunder tiger tornado tower trumpet tunnel
turtle umbrella valley violin volcano wagon walnut whistle willow window wizard""".split()  # noqa: SIM905 (a word list)

_JOINERS = {"passkey-en": "\n", "lines-en": "\n"}


def completion_prompt(record: Record) -> str:
    """The plain-text prompt of a completion-form record: context, separator, question.

    Raises:
        TaskError: if the record is not in completion form.
    """
    if record.metadata.get("format") != "completion":
        raise TaskError(f"record of task {record.task!r} is not in completion form")
    return record.context + _JOINERS.get(record.task, "\n\n") + record.question


def _rendered(task: str, form: str, context: str, question: str) -> str:
    if form == "completion":
        return context + _JOINERS.get(task, "\n\n") + question
    if form == "chat":
        return f"{context}\n{question}"
    return context


def _fit(
    build: Callable[[int], tuple[str, str]],
    counts: Sequence[int],
    fixed: int,
    *,
    target: int,
    overhead: int,
    count_tokens: TokenCounter,
    task: str,
    form: str,
    lo: int = 1,
) -> int | None:
    """The most items (``lo`` or more) whose prompt ``build(k) -> (context, question)`` fits ``target``."""
    memo: dict[int, bool] = {}

    def fits(k: int) -> bool:
        if k not in memo:
            context, question = build(k)
            memo[k] = count_tokens(_rendered(task, form, context, question)) + overhead <= target
        return memo[k]

    guess = int(np.searchsorted(np.cumsum(counts), target - overhead - fixed, side="right"))
    return largest_fitting(fits, guess, lo, len(counts))


def _rng(seed: int, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 100 + ENGLISH_TASKS.index(task), index])


def _start(seed: int, task: str, index: int, count: int) -> int:
    """The first essay of record ``index``: consecutive records start at consecutive essays."""
    base = int(np.random.default_rng([seed, 100 + ENGLISH_TASKS.index(task)]).integers(count))
    return (base + index) % count


def _depth(index: int) -> tuple[int, float]:
    decile = index % 10
    return decile, decile / 9 * 100


def _meta(task: str, form: str, seed: int, index: int, target: int, **extra: str | int | float) -> dict:
    meta: dict[str, str | int | float] = {
        "task": task,
        "seed": seed,
        "index": index,
        "target_length": target,
        "format": form,
    }
    meta.update(extra)
    return meta


def _essay_names(essays: Mapping[str, str] | None, side: str) -> tuple[Mapping[str, str], list[str]]:
    if essays is None:
        essays = read_essays()
    calibration, evaluation = essay_split(essays)
    names = calibration if side == "calibration" else evaluation
    if not names:
        raise TaskError(f"none of the {len(essays)} essays given falls in the {side} split")
    return essays, names


def _too_short(task: str, side: str, names: Sequence[str], target: int) -> TaskError:
    return TaskError(f"the {len(names)} {side} essays are too short for a {task} prompt of {target} tokens")


def _needle_records(
    task: str,
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter,
    seed: int,
    overhead: int,
    form: str,
    essays: Mapping[str, str] | None,
) -> list[Record]:
    """``niah`` and ``niah-multi``: needles at a depth of the evaluation essays."""
    essays, names = _essay_names(essays, "evaluation")
    hay = Haystack(essays, names, count_tokens)
    multi = task == "niah-multi"
    needles = list(PIZZA_NEEDLES) if multi else [NEEDLE]
    question = (PIZZA_QUESTION, PIZZA_RETRIEVAL) if multi else (NEEDLE_QUESTION, NEEDLE_RETRIEVAL)
    text = f"Question: {question[0]}\nAnswer: {question[1]}" if form == "completion" else question[0]
    answer = {"completion": PIZZA_ANSWER, "chat": f"{PIZZA_RETRIEVAL} {PIZZA_ANSWER}"} if multi else None
    fixed = count_tokens(text) + sum(count_tokens(x) for x in needles)
    records = []
    for i in range(n):
        decile, depth = _depth(i)
        # The original multi-needle test spreads the needles evenly from the depth to the end.
        depths = [depth + j * (100 - depth) / len(needles) for j in range(len(needles))]
        pieces, counts, owner, exhausted = hay.take(_start(seed, task, i, len(names)), target_length - overhead)

        def build(
            k: int, pieces: list[str] = pieces, counts: list[int] = counts, depths: list[float] = depths
        ) -> tuple[str, str]:
            inserts = [(depth_boundary(counts, k, d), x) for d, x in zip(depths, needles, strict=True)]
            return splice(pieces[:k], inserts), text

        k = _fit(
            build,
            counts,
            fixed,
            target=target_length,
            overhead=overhead,
            count_tokens=count_tokens,
            task=task,
            form=form,
        )
        if k is None:
            raise TaskError(f"target length {target_length} is too short for a {task} prompt")
        if exhausted and k == len(pieces):
            raise _too_short(task, "evaluation", names, target_length)
        context = build(k)[0]
        meta = _meta(
            task,
            form,
            seed,
            i,
            target_length,
            depth_decile=decile,
            depth_percent=depth,
            needle_token=count_tokens(context[: context.index(needles[0])]),
            context_tokens=count_tokens(context),
            start_essay=names[owner[0]],
            num_essays=len(set(owner[:k])),
        )
        if multi:
            meta["needle_depths"] = "|".join(f"{d:.1f}" for d in depths)
            meta["keywords"] = "|".join(PIZZA_KEYWORDS)
            ref = answer[form] if answer is not None else None
        else:
            ref = NIAH_ANSWER if form == "completion" else NEEDLE
        records.append(Record(task=task, context=context, question=text, answer=ref, metadata=meta))
    return records


def _passkey_records(
    n: int, *, target_length: int, count_tokens: TokenCounter, seed: int, overhead: int, form: str
) -> list[Record]:
    """``passkey-en``: the passkey line at a depth of repeated grass/sky/sun filler."""
    question = f"{PASSKEY_QUESTION} {PASSKEY_RETRIEVAL}" if form == "completion" else PASSKEY_QUESTION
    per = [count_tokens(" " + s) for s in PASSKEY_FILLER]
    budget = target_length - overhead
    counts = [per[j % len(per)] for j in range(max(budget // max(min(per), 1) + 16, 2 * _MIN_ITEMS))]
    records = []
    for i in range(n):
        rng = _rng(seed, "passkey-en", i)
        key = int(rng.integers(10_000, 100_000))
        info = f"The pass key is {key}. Remember it. {key} is the pass key."
        decile, depth = _depth(i)

        def build(k: int, info: str = info, depth: float = depth) -> tuple[str, str]:
            filler = [PASSKEY_FILLER[j % len(PASSKEY_FILLER)] for j in range(k)]
            m = int(depth / 100 * k)
            parts = [PASSKEY_INTRO, " ".join(filler[:m]), info, " ".join(filler[m:])]
            return "\n".join(p for p in parts if p), question

        fixed = count_tokens(PASSKEY_INTRO) + count_tokens(info) + count_tokens(question)
        k = _fit(
            build,
            counts,
            fixed,
            target=target_length,
            overhead=overhead,
            count_tokens=count_tokens,
            task="passkey-en",
            form=form,
            lo=_MIN_ITEMS,
        )
        if k is None:
            raise TaskError(
                f"a passkey-en prompt of {target_length} tokens holds fewer than {_MIN_ITEMS} filler sentences"
            )
        meta = _meta(
            "passkey-en",
            form,
            seed,
            i,
            target_length,
            depth_decile=decile,
            depth_percent=depth,
            num_sentences=k,
            needle_sentence=int(depth / 100 * k),
        )
        records.append(
            Record(task="passkey-en", context=build(k)[0], question=question, answer=str(key), metadata=meta)
        )
    return records


def _lines_records(
    n: int, *, target_length: int, count_tokens: TokenCounter, seed: int, overhead: int, form: str
) -> list[Record]:
    """``lines-en``: LongEval lines retrieval in its original wording."""
    example = "line righteous-ethernet: REGISTER_CONTENT is <24640>"
    budget = target_length - overhead - count_tokens(LINES_INTRO)
    cap = min(len(_ADJECTIVES) * len(_NOUNS), max(budget // max(count_tokens(example) // 2, 1) + 16, _MIN_ITEMS))
    records = []
    for i in range(n):
        rng = _rng(seed, "lines-en", i)
        picks = rng.choice(len(_ADJECTIVES) * len(_NOUNS), size=cap, replace=False)
        names = [f"{_ADJECTIVES[p // len(_NOUNS)]}-{_NOUNS[p % len(_NOUNS)]}" for p in picks]
        values = [int(v) for v in rng.integers(1, 50_001, size=cap)]
        lines = [f"line {k}: REGISTER_CONTENT is <{v}>" for k, v in zip(names, values, strict=True)]
        decile, depth = _depth(i)

        def asked(k: int, depth: float = depth) -> int:
            return round(depth / 100 * (k - 1))

        def build(k: int, lines: list[str] = lines, names: list[str] = names) -> tuple[str, str]:
            key = names[asked(k)]
            question = (
                f"Now the record is over. Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
            )
            if form == "completion":
                question += f" The <REGISTER_CONTENT> in line {key} is <"
            return LINES_INTRO + "\n".join(lines[:k]), question

        counts = [count_tokens(line) for line in lines]
        fixed = count_tokens(LINES_INTRO) + count_tokens(build(1)[1])
        k = _fit(
            build,
            counts,
            fixed,
            target=target_length,
            overhead=overhead,
            count_tokens=count_tokens,
            task="lines-en",
            form=form,
            lo=_MIN_ITEMS,
        )
        if k is None:
            raise TaskError(f"a lines-en prompt of {target_length} tokens holds fewer than {_MIN_ITEMS} lines")
        if k == cap == len(_ADJECTIVES) * len(_NOUNS):
            raise TaskError(f"a lines-en prompt of {target_length} tokens needs more than {cap} distinct line indices")
        j = asked(k)
        context, question = build(k)
        meta = _meta(
            "lines-en",
            form,
            seed,
            i,
            target_length,
            depth_decile=decile,
            depth_percent=depth,
            num_lines=k,
            line_index=j,
            key=names[j],
        )
        records.append(
            Record(task="lines-en", context=context, question=question, answer=str(values[j]), metadata=meta)
        )
    return records


def _essay_records(
    task: str,
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter,
    seed: int,
    overhead: int,
    essays: Mapping[str, str] | None,
    side: str | None = None,
) -> list[Record]:
    """``summary`` (calibration essays, chat), ``continue`` (calibration essays, plain text, the next sentences as
    the answer) and ``essay-ppl`` (evaluation essays, plain text)."""
    side = side or ("evaluation" if task == "essay-ppl" else "calibration")
    form = "chat" if task == "summary" else "plain"
    question = SUMMARY_QUESTION if task == "summary" else ""
    essays, names = _essay_names(essays, side)
    hay = Haystack(essays, names, count_tokens)
    records = []
    for i in range(n):
        budget = target_length - overhead
        if task == "continue":
            # Start at a seeded sentence of the first essay, so that records sharing an essay differ; take enough
            # text behind it for the context and the answer.
            pieces, counts, owner, exhausted = hay.take(_start(seed, task, i, len(names)), 2 * budget + 512)
            first = owner.count(owner[0]) if owner else 0
            skip = int(np.random.default_rng([seed, 300, i]).integers(max(1, first)))
            while skip and sum(counts[skip:]) < budget + CONTINUE_ANSWER_TOKENS + budget // 4:
                skip //= 2
            pieces, counts, owner = pieces[skip:], counts[skip:], owner[skip:]
            if pieces:
                pieces[0] = pieces[0].lstrip()
        else:
            pieces, counts, owner, exhausted = hay.take(_start(seed, task, i, len(names)), budget)

        def build(k: int, pieces: list[str] = pieces) -> tuple[str, str]:
            return "".join(pieces[:k]).strip(), question

        k = _fit(
            build,
            counts,
            count_tokens(question),
            target=target_length,
            overhead=overhead,
            count_tokens=count_tokens,
            task=task,
            form=form,
        )
        if k is None:
            raise TaskError(f"target length {target_length} is too short for a {task} prompt")
        if exhausted and k == len(pieces):
            raise _too_short(task, side, names, target_length)
        answer = None
        if task == "continue":
            # One sentence past the fit, so that the prompt reaches target_length (calibration cuts the middle of
            # the context to fit it with its answer), then the sentences after it, CONTINUE_ANSWER_TOKENS or more.
            k = min(k + 1, len(pieces) - 1)
            end = k
            while end < len(pieces) and count_tokens("".join(pieces[k:end])) < CONTINUE_ANSWER_TOKENS:
                end += 1
            answer = "".join(pieces[k:end])
            if not answer.strip():
                raise _too_short(task, side, names, target_length)
        used = list(dict.fromkeys(names[o] for o in owner[:k]))
        meta = _meta(task, form, seed, i, target_length, essays=",".join(used), num_sentences=k)
        records.append(Record(task=task, context=build(k)[0], question=question, answer=answer, metadata=meta))
    return records


def _check_request(n: int, target_length: int, overhead: int) -> None:
    if n < 1:
        raise TaskError(f"number of records must be positive, got {n}")
    if target_length <= overhead + 16:
        raise TaskError(f"target length {target_length} is too short for a task prompt")


def generate_english(
    task: str,
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    form: str | None = None,
    essays: Mapping[str, str] | None = None,
) -> list[Record]:
    """Generate ``n`` records of an English task (one of `ENGLISH_TASKS`).

    Args:
        task: ``niah``, ``niah-multi``, ``passkey-en``, ``lines-en``, ``summary``, ``essay-ppl`` or ``continue``.
        n: Number of records; retrieval record ``i`` sits at depth ``(i % 10) / 9 * 100`` percent.
        target_length: Prompt tokens (rendered context + question + ``overhead``), missed by less
            than one sentence.
        count_tokens: Token counter of the tokenizer in use.
        seed: Seed; equal seeds give equal records.
        overhead: Tokens the template (chat template, or BOS in completion form) adds.
        form: ``completion`` (default of the retrieval tasks) or ``chat``; ``summary`` is chat
            only, ``essay-ppl`` and ``continue`` plain text only.
        essays: All essays ``{stem: text}`` (default: `moa_plan.assets.read_essays()`); each task
            takes its own side of `essay_split`: ``summary`` and ``continue`` the calibration essays, ``niah``,
            ``niah-multi`` and ``essay-ppl`` the evaluation essays; ``passkey-en`` and
            ``lines-en`` read none.

    Raises:
        TaskError: for an unknown task or form, a length too short for the prompt, or essays too
            short for the length. `moa_plan.assets.AssetError` if the essays are needed, not
            given and not fetched.
    """
    if task not in ENGLISH_TASKS:
        raise TaskError(f"unknown English task {task!r}; expected one of {', '.join(ENGLISH_TASKS)}")
    own = {"summary": "chat", "essay-ppl": "plain", "continue": "plain"}.get(task)
    if form is None:
        form = own or "completion"
    if own is not None and form != own:
        raise TaskError(f"task {task!r} has only the {own} form, not {form!r}")
    if own is None and form not in FORMS:
        raise TaskError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    _check_request(n, target_length, overhead)
    common = {"target_length": target_length, "count_tokens": count_tokens, "seed": seed, "overhead": overhead}
    if task in ("niah", "niah-multi"):
        return _needle_records(task, n, form=form, essays=essays, **common)  # type: ignore[arg-type]
    if task == "passkey-en":
        return _passkey_records(n, form=form, **common)  # type: ignore[arg-type]
    if task == "lines-en":
        return _lines_records(n, form=form, **common)  # type: ignore[arg-type]
    return _essay_records(task, n, essays=essays, **common)  # type: ignore[arg-type]


def essay_ppl_texts(
    n: int,
    length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    *,
    essays: Mapping[str, str] | None = None,
    overhead: int = 0,
    side: str = "evaluation",
) -> list[str]:
    """``n`` texts of whole evaluation essays (joined by blank lines when one is short) cut to ``length`` tokens.

    Each text is cut at a sentence boundary, at most ``length`` tokens with ``overhead`` (a BOS)
    and less than a sentence short of it; text ``i`` starts at the ``i``-th essay after a
    seed-chosen one. See `generate_english` (task ``essay-ppl``) for the errors. ``side="calibration"``
    takes the calibration essays instead: perplexity to choose a setting by (validation), never to report.
    """
    if side == "evaluation":
        records = generate_english(
            "essay-ppl", n, target_length=length, count_tokens=count_tokens, seed=seed, overhead=overhead, essays=essays
        )
    elif side == "calibration":
        _check_request(n, length, overhead)
        records = _essay_records(
            "essay-ppl", n, target_length=length, count_tokens=count_tokens, seed=seed, overhead=overhead,
            essays=essays, side=side,
        )  # fmt: skip
    else:
        raise TaskError(f"unknown essay side {side!r}; expected evaluation or calibration")
    return [r.context for r in records]
