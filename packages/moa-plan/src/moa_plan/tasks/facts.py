"""Long-range recall tasks for *calibration*, on the calibration essays only: ``facts``, ``quotes``, ``items``, ``codes``.

MoA calibrates on long documents answered by the model itself (summaries). A small model's
summary leans on recent tokens, so its answer loss says little about the heads that carry a far
fact. DuoAttention calibrates on synthetic passkeys hidden in book text instead. These tasks are
that idea in wordings of their own, so that no evaluation task is a calibration task: a few
lines are spread through calibration essays (at sentence boundaries, one per evenly spaced depth
slot), and one of them is asked, in completion form, so the model's own continuation is the
answer; calibration keeps the model's answer (model alignment), whatever it is. Each task makes
the model use far context in another way, so that a calibration mix covers more of the heads an
unseen long-range task needs:

- ``facts``: "The special magic number for <city> is <7 digits>." A number keyed by a name.
- ``quotes``: "<Name> wrote in a notebook: "<a made-up sentence>"" and the model repeats the
  sentence: copying several words from far back, as a needle sentence must be copied.
- ``items``: "In the <room>, <name> left the <object>." asked as "What did <name> leave in the
  <room>?": one word chosen by two keys, the question worded apart from the line.
- ``codes``: "The <colour> locker opens with the code <4 digits>." in a *repetitive* haystack: one
  short passage of a calibration essay (six sentences) repeated end to end, the kind of context
  no essay task gives (on SmolLM2 its measured cuts rank the same strongest heads as ``facts``,
  RESULTS.md).

The lines, names and wording share nothing with ``niah``, ``niah-multi``, ``passkey-en`` or
``lines-en``, and the haystack is only the calibration side of `essay_split`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from moa_plan.assets import read_essays
from moa_plan.records import Record
from moa_plan.tasks.generators import TaskError, TokenCounter, word_count
from moa_plan.tasks.haystack import essay_split, split_sentences

__all__ = [
    "CITIES",
    "RECALL_TASKS",
    "generate_codes",
    "generate_facts",
    "generate_items",
    "generate_quotes",
    "generate_recall",
]

CITIES = """Lisbon Oslo Nairobi Lima Hanoi Quito Dakar Riga Tbilisi Accra Havana Manila Kyoto Perth Porto
Valencia Bergen Tromso Cusco Cordoba Leipzig Lyon Turin Krakow Gdansk Tallinn Vilnius Minsk Yerevan Baku
Almaty Tashkent Kabul Lahore Dhaka Colombo Kathmandu Thimphu Yangon Vientiane Phnom-Penh Jakarta Surabaya
Darwin Hobart Auckland Suva Apia Honolulu Anchorage Calgary Halifax Quebec Tucson Denver Memphis Boise
Omaha Tulsa Austin Tampa Raleigh Richmond Albany Hartford Montevideo Asuncion Sucre Caracas Bogota
Medellin Panama Managua Tegucigalpa Kingston Nassau Reykjavik Dublin Cardiff Glasgow Bruges Ghent Utrecht
Bremen Hanover Dresden Salzburg Graz Ljubljana Zagreb Split Sarajevo Skopje Tirana Sofia Varna Odessa
Kazan Samara Perm Omsk Irkutsk Harbin Dalian Xiamen Busan Sapporo Osaka Nagoya""".split()  # noqa: SIM905
NAMES = """Amara Bruno Celia Dmitri Elena Farid Greta Hugo Ines Jonas Kira Luca Mira Nadia Omar Petra Rafael
Sofia Tomas Una Viktor Wanda Yusuf Zora Anika Boris Clara Diego Edith Felix Hana Ivan Julia Karim Lena Milo
Nina Oskar Paula Quentin Rosa Stefan Tara Uri Vera Walter Xenia Yara Zeno""".split()  # noqa: SIM905
ROOMS = """kitchen attic cellar garage hallway library greenhouse workshop pantry balcony studio garden
laundry office bathroom veranda""".split()  # noqa: SIM905
OBJECTS = """umbrella lantern violin compass teapot hammer kite telescope scarf basket candle ladder
mirror typewriter bicycle saddle anchor clock shovel whistle""".split()  # noqa: SIM905
COLOURS = """red orange yellow green blue purple white black grey brown pink violet teal amber ivory
olive""".split()  # noqa: SIM905
_ADJECTIVES = [
    "quiet",
    "copper",
    "hollow",
    "crimson",
    "gentle",
    "frozen",
    "narrow",
    "silver",
    "patient",
    "wooden",
    "distant",
    "golden",
]
_NOUNS = [
    "fox",
    "river",
    "lantern",
    "orchard",
    "sailor",
    "bridge",
    "meadow",
    "engine",
    "heron",
    "tower",
    "garden",
    "violin",
]
_VERBS = ["waited beside", "slept under", "danced around", "rested near", "sang above", "drifted past"]

_FACT_LINE = "The special magic number for {city} is {number}."
_FACT_QUESTION = (
    "Question: What is the special magic number for {city} mentioned in the text?\n"
    "Answer: The special magic number for {city} is"
)
_QUOTE_LINE = '{name} wrote in a notebook: "{sentence}"'
_QUOTE_QUESTION = 'Question: What did {name} write in the notebook?\nAnswer: {name} wrote in the notebook: "'
_ITEM_LINE = "In the {room}, {name} left the {object}."
_ITEM_QUESTION = "Question: What did {name} leave in the {room}?\nAnswer: {name} left the"
_CODE_LINE = "The {colour} locker opens with the code {code}."
_CODE_QUESTION = "Question: Which code opens the {colour} locker?\nAnswer: The {colour} locker opens with the code"
PASSAGE_SENTENCES = 6
PASSAGE_WORDS = 20


def _haystack(essays: Mapping[str, str], rng: np.random.Generator) -> list[str]:
    """Sentences of the calibration essays, from a random essay on, wrapping around."""
    names = sorted(essays)
    start = int(rng.integers(len(names)))
    sentences: list[str] = []
    for k in range(len(names)):
        sentences += split_sentences(essays[names[(start + k) % len(names)]].strip() + "\n\n")
    return sentences


def _repeated_haystack(essays: Mapping[str, str], rng: np.random.Generator) -> Iterator[str]:
    """A passage of `PASSAGE_SENTENCES` consecutive short sentences of a calibration essay, repeated forever.

    Short (at most `PASSAGE_WORDS` words each), so that the fill stops within a short sentence of
    its budget; if no essay has such a run, the first sentences of the longest essay.
    """
    runs: list[list[str]] = []
    longest: list[str] = []
    for name in sorted(essays):
        sentences = [x.strip() for x in split_sentences(essays[name]) if x.strip()]
        longest = max(longest, sentences, key=len)
        for k in range(len(sentences) - PASSAGE_SENTENCES + 1):
            run = sentences[k : k + PASSAGE_SENTENCES]
            if all(len(x.split()) <= PASSAGE_WORDS for x in run):
                runs.append(run)
    passage = runs[int(rng.integers(len(runs)))] if runs else longest[:PASSAGE_SENTENCES]
    yield from itertools.cycle([" " + x for x in passage])  # whitespace starts a piece; empty: the caller says so


# A task draws, for record rng and count k: the k lines, the k references and, per asked slot, the question.
Draw = Callable[[np.random.Generator, int], tuple[list[str], list[str], list[str]]]


def _draw_facts(rng: np.random.Generator, k: int) -> tuple[list[str], list[str], list[str]]:
    cities = [str(c) for c in rng.choice(CITIES, size=k, replace=False)]
    numbers = [str(int(x)) for x in rng.integers(1_000_000, 10_000_000, size=k)]
    lines = [_FACT_LINE.format(city=c, number=v) for c, v in zip(cities, numbers, strict=True)]
    return lines, numbers, [_FACT_QUESTION.format(city=c) for c in cities]


def _draw_quotes(rng: np.random.Generator, k: int) -> tuple[list[str], list[str], list[str]]:
    names = [str(n) for n in rng.choice(NAMES, size=k, replace=False)]
    sentences = []
    for _ in range(k):
        a, b = (str(x) for x in rng.choice(_ADJECTIVES, size=2, replace=False))
        n1, n2 = (str(x) for x in rng.choice(_NOUNS, size=2, replace=False))
        sentences.append(f"The {a} {n1} {rng.choice(_VERBS)} the {b} {n2}.")
    lines = [_QUOTE_LINE.format(name=n, sentence=s) for n, s in zip(names, sentences, strict=True)]
    return lines, sentences, [_QUOTE_QUESTION.format(name=n) for n in names]


def _draw_items(rng: np.random.Generator, k: int) -> tuple[list[str], list[str], list[str]]:
    names = [str(n) for n in rng.choice(NAMES, size=k, replace=False)]
    rooms = [str(r) for r in rng.choice(ROOMS, size=k, replace=False)]
    objects = [str(o) for o in rng.choice(OBJECTS, size=k, replace=False)]
    lines = [_ITEM_LINE.format(room=r, name=n, object=o) for n, r, o in zip(names, rooms, objects, strict=True)]
    return lines, objects, [_ITEM_QUESTION.format(name=n, room=r) for n, r in zip(names, rooms, strict=True)]


def _draw_codes(rng: np.random.Generator, k: int) -> tuple[list[str], list[str], list[str]]:
    colours = [str(c) for c in rng.choice(COLOURS, size=k, replace=False)]
    codes = [str(int(x)) for x in rng.integers(1000, 10000, size=k)]
    lines = [_CODE_LINE.format(colour=c, code=v) for c, v in zip(colours, codes, strict=True)]
    return lines, codes, [_CODE_QUESTION.format(colour=c) for c in colours]


Haystack = Callable[[Mapping[str, str], np.random.Generator], Iterable[str]]
# Per task: its draw, its random stream (records of one seed differ between tasks) and its haystack.
_DRAWS: dict[str, tuple[Draw, int, Haystack]] = {
    "facts": (_draw_facts, 7, _haystack),
    "quotes": (_draw_quotes, 11, _haystack),
    "items": (_draw_items, 13, _haystack),
    "codes": (_draw_codes, 17, _repeated_haystack),
}
RECALL_TASKS = tuple(_DRAWS)


def generate_recall(
    task: str,
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    essays: Mapping[str, str] | None = None,
    lines: int = 4,
) -> list[Record]:
    """``n`` records of ``task`` (one of `RECALL_TASKS`), ``lines`` lines in about ``target_length`` tokens.

    Record ``i`` asks the line in depth slot ``i % lines`` (the slots split the context evenly).
    ``essays`` are all essays (default: the cached ones); only the calibration side of
    `essay_split` is used, as for ``summary``. ``metadata["reference"]`` is the asked line's answer.

    Raises:
        TaskError: for an unknown task, a non-positive ``n`` or ``lines``, or a length the essays cannot fill.
    """
    if task not in _DRAWS:
        raise TaskError(f"unknown recall task {task!r}; expected one of {', '.join(RECALL_TASKS)}")
    if n < 1 or lines < 1:
        raise TaskError(f"{task} needs positive n and lines, got n={n}, lines={lines}")
    everything = read_essays() if essays is None else essays
    calibration, _ = essay_split(everything)
    essays = {name: everything[name] for name in calibration}
    if not essays:
        raise TaskError(f"{task} needs at least one calibration essay")
    draw, stream, haystack = _DRAWS[task]
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        texts, references, questions = draw(rng, lines)
        asked = i % lines
        question = questions[asked]
        budget = target_length - overhead - count_tokens(question) - sum(count_tokens(x) + 2 for x in texts)
        if budget < 16 * lines:
            raise TaskError(f"target length {target_length} is too short for {lines} {task} lines")
        kept, total = [], 0
        for sentence in haystack(essays, rng):
            size = count_tokens(sentence)
            if total + size > budget:
                break
            kept.append(sentence)
            total += size
        if total < budget // 2:
            raise TaskError(f"the calibration essays hold fewer than {budget} tokens for a {task} record")
        # Slot k covers depths [k/lines, (k+1)/lines); its line goes at a random sentence boundary in it, but
        # not in the middle tenth: calibration fits a record to its length by cutting the middle out.
        count = len(kept)
        middle = range(int(0.45 * count), int(0.55 * count) + 1)
        slots = []
        for k in range(lines):
            lo, hi = k * count // lines, max(k * count // lines + 1, (k + 1) * count // lines)
            choices = [x for x in range(lo, hi) if x not in middle] or list(range(lo, hi))
            slots.append(int(rng.choice(choices)))
        pieces = list(kept)
        for k in reversed(range(lines)):
            pieces.insert(slots[k], f"\n{texts[k]}\n")
        records.append(
            Record(
                task=task,
                context="".join(pieces).strip(),
                question=question,
                answer=None,
                metadata={
                    "task": task,
                    "seed": seed,
                    "index": i,
                    "target_length": target_length,
                    "format": "completion",
                    "line": texts[asked],
                    "reference": references[asked],
                    "depth_slot": asked,
                },
            )
        )
    return records


def generate_facts(n: int, *, facts: int = 4, **options: object) -> list[Record]:
    """``n`` records of the ``facts`` task (`generate_recall`), ``facts`` facts each."""
    return generate_recall("facts", n, lines=facts, **options)  # type: ignore[arg-type]


def generate_quotes(n: int, **options: object) -> list[Record]:
    """``n`` records of the ``quotes`` task (`generate_recall`)."""
    return generate_recall("quotes", n, **options)  # type: ignore[arg-type]


def generate_items(n: int, **options: object) -> list[Record]:
    """``n`` records of the ``items`` task (`generate_recall`)."""
    return generate_recall("items", n, **options)  # type: ignore[arg-type]


def generate_codes(n: int, **options: object) -> list[Record]:
    """``n`` records of the ``codes`` task (`generate_recall`): lines in one repeated passage."""
    return generate_recall("codes", n, **options)  # type: ignore[arg-type]
