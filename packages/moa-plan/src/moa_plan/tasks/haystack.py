"""The haystack machinery of the English tasks: essay split, sentences, fitting a prompt to a length.

Pure Python + numpy; the tokenizer is only seen through a token-counting callable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from moa_plan.tasks.generators import TokenCounter

__all__ = [
    "CALIBRATION_FRACTION",
    "Haystack",
    "depth_boundary",
    "essay_split",
    "largest_fitting",
    "splice",
    "split_sentences",
]

CALIBRATION_FRACTION = 0.4
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|(?<=[a-z0-9])[.!?](?=[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences whose concatenation is ``text``; whitespace starts the next piece.

    A sentence ends at ``.``, ``!`` or ``?`` (and closing quotes/brackets) before whitespace, or
    before a capital right after a lowercase word (the essays lost some paragraph breaks:
    ``"great.It used"``).
    """
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            pieces.append(text[start : match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _unit(stem: str) -> float:
    return int(hashlib.sha256(stem.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def essay_split(essays: Mapping[str, str] | Sequence[str]) -> tuple[list[str], list[str]]:
    """Split essays into ``(calibration_names, evaluation_names)``, both sorted.

    An essay is calibration iff the first 64 bits of sha256(file stem), as a fraction of 2**64, are
    below `CALIBRATION_FRACTION` (0.4): deterministic, disjoint, covering every name, and an essay
    keeps its side whatever other essays are present. On the 49 Paul Graham essays that is 19
    calibration and 30 evaluation essays.
    """
    names = sorted(essays)
    calibration = [n for n in names if _unit(n) < CALIBRATION_FRACTION]
    return calibration, [n for n in names if _unit(n) >= CALIBRATION_FRACTION]


class Haystack:
    """The sentences of some essays, token-counted lazily, taken in a fixed cyclic order."""

    def __init__(self, essays: Mapping[str, str], names: Sequence[str], count_tokens: TokenCounter) -> None:
        self.essays, self.names, self.count = essays, list(names), count_tokens
        self._cache: dict[str, tuple[list[str], list[int]]] = {}

    def _essay(self, name: str) -> tuple[list[str], list[int]]:
        if name not in self._cache:
            pieces = split_sentences(self.essays[name].strip())
            self._cache[name] = pieces, [self.count(p) for p in pieces]
        return self._cache[name]

    def take(self, start: int, budget: int) -> tuple[list[str], list[int], list[int], bool]:
        """Sentences of the essays from number ``start`` on (each at most once) past ``budget`` tokens.

        Returns:
            ``(pieces, counts, essay_of_piece, exhausted)``; ``exhausted`` when every essay was
            taken and they still hold fewer than ``budget`` tokens plus a margin.
        """
        pieces: list[str] = []
        counts: list[int] = []
        owner: list[int] = []
        want = budget + budget // 4 + 256
        for step in range(len(self.names)):
            number = (start + step) % len(self.names)
            p, c = self._essay(self.names[number])
            if not p:
                continue
            if pieces:
                # Essays are joined by a blank line.
                p, c = ["\n\n" + p[0], *p[1:]], [self.count("\n\n" + p[0]), *c[1:]]
            pieces += p
            counts += c
            owner += [number] * len(p)
            if sum(counts) >= want:
                return pieces, counts, owner, False
        return pieces, counts, owner, True


def largest_fitting(fits: Callable[[int], bool], guess: int, lo: int, hi: int) -> int | None:
    """Largest k in [lo, hi] with ``fits(k)`` (monotone), searched outward from ``guess``."""
    if hi < lo or not fits(lo):
        return None
    good, bad = lo, hi + 1
    guess = min(max(guess, lo), hi)
    step = 1
    if fits(guess):
        good = guess
        while good + step < bad:
            if fits(good + step):
                good += step
                step *= 2
            else:
                bad = good + step
                break
    else:
        bad = guess
        while bad - step > good:
            if fits(bad - step):
                good = bad - step
                break
            bad -= step
            step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def depth_boundary(counts: Sequence[int], k: int, percent: float) -> int:
    """The last sentence boundary (0..k) at or before ``percent`` of the first k sentences' tokens."""
    cum = np.concatenate([[0], np.cumsum(counts[:k])])
    return int(np.searchsorted(cum, percent / 100 * cum[-1], side="right")) - 1


def splice(pieces: Sequence[str], inserts: Sequence[tuple[int, str]]) -> str:
    """Join ``pieces``, putting each ``(boundary, text)`` on its own line before piece ``boundary``."""
    parts: list[str] = []
    last = 0
    for boundary, text in sorted(inserts, key=lambda t: t[0]):
        parts += ["".join(pieces[last:boundary]).strip(), text]
        last = boundary
    parts.append("".join(pieces[last:]).strip())
    return "\n".join(p for p in parts if p)
