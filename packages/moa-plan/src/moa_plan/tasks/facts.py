"""``facts``: a long-range retrieval task for *calibration*, on the calibration essays only.

MoA calibrates on long documents answered by the model itself (summaries). A small model's
summary leans on recent tokens, so its answer loss says little about the heads that carry a far
fact. DuoAttention calibrates on synthetic passkeys hidden in book text instead. ``facts`` is that
idea in a wording of its own, so that no evaluation task is a calibration task: several facts
"The special magic number for <city> is <7 digits>." are spread through calibration essays (at
sentence boundaries, one per evenly spaced depth slot), and one of them is asked. Completion form
(the question ends with "The special magic number for <city> is"), so the model's own answer is
the digits; calibration keeps the model's answer (model alignment), whatever it is.

The needles, cities and wording share nothing with ``niah``, ``niah-multi``, ``passkey-en`` or
``lines-en``, and the haystack is only the calibration side of `essay_split`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from moa_plan.assets import read_essays
from moa_plan.records import Record
from moa_plan.tasks.generators import TaskError, TokenCounter, word_count
from moa_plan.tasks.haystack import essay_split, split_sentences

__all__ = ["CITIES", "generate_facts"]

CITIES = """Lisbon Oslo Nairobi Lima Hanoi Quito Dakar Riga Tbilisi Accra Havana Manila Kyoto Perth Porto
Valencia Bergen Tromso Cusco Cordoba Leipzig Lyon Turin Krakow Gdansk Tallinn Vilnius Minsk Yerevan Baku
Almaty Tashkent Kabul Lahore Dhaka Colombo Kathmandu Thimphu Yangon Vientiane Phnom-Penh Jakarta Surabaya
Darwin Hobart Auckland Suva Apia Honolulu Anchorage Calgary Halifax Quebec Tucson Denver Memphis Boise
Omaha Tulsa Austin Tampa Raleigh Richmond Albany Hartford Montevideo Asuncion Sucre Caracas Bogota
Medellin Panama Managua Tegucigalpa Kingston Nassau Reykjavik Dublin Cardiff Glasgow Bruges Ghent Utrecht
Bremen Hanover Dresden Salzburg Graz Ljubljana Zagreb Split Sarajevo Skopje Tirana Sofia Varna Odessa
Kazan Samara Perm Omsk Irkutsk Harbin Dalian Xiamen Busan Sapporo Osaka Nagoya""".split()  # noqa: SIM905
QUESTION = "Question: What is the special magic number for {city} mentioned in the text?\nAnswer: The special magic number for {city} is"
FACT = "The special magic number for {city} is {number}."


def _haystack(essays: Mapping[str, str], rng: np.random.Generator) -> list[str]:
    """Sentences of the calibration essays, from a random essay on, wrapping around."""
    names = sorted(essays)
    start = int(rng.integers(len(names)))
    sentences: list[str] = []
    for k in range(len(names)):
        sentences += split_sentences(essays[names[(start + k) % len(names)]].strip() + "\n\n")
    return sentences


def generate_facts(
    n: int,
    *,
    target_length: int,
    count_tokens: TokenCounter = word_count,
    seed: int = 0,
    overhead: int = 0,
    essays: Mapping[str, str] | None = None,
    facts: int = 4,
) -> list[Record]:
    """``n`` records of ``facts`` facts in calibration-essay text of about ``target_length`` tokens.

    Record ``i`` asks the fact in depth slot ``i % facts`` (the slots split the context evenly).
    ``essays`` are all essays (default: the cached ones); only the calibration side of
    `essay_split` is used, as for ``summary``.

    Raises:
        TaskError: for a non-positive ``n`` or ``facts``, or a length the essays cannot fill.
    """
    if n < 1 or facts < 1:
        raise TaskError(f"facts needs positive n and facts, got n={n}, facts={facts}")
    everything = read_essays() if essays is None else essays
    calibration, _ = essay_split(everything)
    essays = {name: everything[name] for name in calibration}
    if not essays:
        raise TaskError("facts needs at least one calibration essay")
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        cities = [str(c) for c in rng.choice(CITIES, size=facts, replace=False)]
        numbers = [str(int(x)) for x in rng.integers(1_000_000, 10_000_000, size=facts)]
        lines = [FACT.format(city=c, number=v) for c, v in zip(cities, numbers, strict=True)]
        asked = i % facts
        question = QUESTION.format(city=cities[asked])
        budget = target_length - overhead - count_tokens(question) - sum(count_tokens(x) + 2 for x in lines)
        if budget < 16 * facts:
            raise TaskError(f"target length {target_length} is too short for {facts} facts")
        sentences = _haystack(essays, rng)
        kept, total = [], 0
        for sentence in sentences:
            size = count_tokens(sentence)
            if total + size > budget:
                break
            kept.append(sentence)
            total += size
        if total < budget // 2:
            raise TaskError(f"the calibration essays hold fewer than {budget} tokens for a facts record")
        # Slot k covers depths [k/facts, (k+1)/facts); the fact goes at a random sentence boundary in it, but
        # not in the middle tenth: calibration fits a record to its length by cutting the middle out.
        count = len(kept)
        middle = range(int(0.45 * count), int(0.55 * count) + 1)
        slots = []
        for k in range(facts):
            lo, hi = k * count // facts, max(k * count // facts + 1, (k + 1) * count // facts)
            choices = [x for x in range(lo, hi) if x not in middle] or list(range(lo, hi))
            slots.append(int(rng.choice(choices)))
        pieces = list(kept)
        for k in reversed(range(facts)):
            pieces.insert(slots[k], f"\n{lines[k]}\n")
        context = "".join(pieces).strip()
        records.append(
            Record(
                task="facts",
                context=context,
                question=question,
                answer=None,
                metadata={
                    "task": "facts",
                    "seed": seed,
                    "index": i,
                    "target_length": target_length,
                    "format": "completion",
                    "asked": cities[asked],
                    "reference": numbers[asked],
                    "depth_slot": asked,
                },
            )
        )
    return records
