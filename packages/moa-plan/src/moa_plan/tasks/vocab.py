"""The fixed word inventory of the synthetic tasks and the Markov chain of their filler text.

Every word is a single token of the reference word-level tokenizer (``tools/build_tokenizer.py``):
keys are two-syllable pseudo-words, values are five-digit numbers, filler words are
consonant-vowel-consonant pseudo-words, plus a few template words. Everything is derived from
fixed seeds, so the inventory is identical on every machine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["MarkovChain", "Vocabulary", "markov_chain", "vocabulary"]

NUM_KEYS = 1024
NUM_VALUES = 1000
NUM_FILLER = 192
NUM_CLASSES = 8
TEMPLATE_WORDS = (
    "line",
    "what",
    "is",
    "the",
    "passkey",
    "magic",
    "remember",
    "list",
    "lines",
    "answer",
    "with",
    "value",
    "read",
    "text",
    "and",
    "you",
    "are",
    "a",
    "helpful",
    "assistant",
    "next",
    "word",
    "from",
    ".",
    ",",
)
_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True, kw_only=True)
class Vocabulary:
    """The words of the task suite, each one token of the reference tokenizer.

    Attributes:
        keys: Line keys (two-syllable pseudo-words), also the multi-key needle names.
        values: Five-digit numbers used as line values and passkeys.
        filler: Filler words of the Markov-chain text.
        template: Fixed words of the task templates.
    """

    keys: tuple[str, ...]
    values: tuple[str, ...]
    filler: tuple[str, ...]
    template: tuple[str, ...]

    def words(self) -> tuple[str, ...]:
        """All words, template words first (the tokenizer's order after its special tokens)."""
        return self.template + self.keys + self.values + self.filler


@functools.cache
def vocabulary() -> Vocabulary:
    """The task vocabulary (deterministic, cached)."""
    rng = np.random.default_rng(20240601)
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    pairs = [a + b for a in syllables for b in syllables if a + b not in TEMPLATE_WORDS]
    keys = tuple(pairs[i] for i in sorted(rng.choice(len(pairs), NUM_KEYS, replace=False)))
    values = tuple(str(10000 + int(x)) for x in sorted(rng.choice(90000, NUM_VALUES, replace=False)))
    cvc = [a + v + b for a in _CONSONANTS for v in _VOWELS for b in _CONSONANTS]
    cvc = [w for w in cvc if w not in TEMPLATE_WORDS]
    filler = tuple(cvc[i] for i in sorted(rng.choice(len(cvc), NUM_FILLER, replace=False)))
    return Vocabulary(keys=keys, values=values, filler=filler, template=TEMPLATE_WORDS)


@dataclass(frozen=True, kw_only=True)
class MarkovChain:
    """A second-order Markov chain over the filler words.

    The next word depends on the current word and on the class (one of 8) of the word before:
    ``successors[class(prev), cur]`` lists 1 to 3 candidates with probabilities ``probs``. About
    half of the states are deterministic (one successor), which the local-text task asks about.

    Attributes:
        words: The filler words.
        word_class: int64 [W], class of each word.
        successors: int64 [8, W, 3], candidate next words (indices into ``words``).
        probs: float64 [8, W, 3], their probabilities (rows sum to 1, zeros pad).
    """

    words: tuple[str, ...]
    word_class: np.ndarray
    successors: np.ndarray
    probs: np.ndarray

    def is_deterministic(self, prev: int, cur: int) -> bool:
        """Whether the state ``(prev, cur)`` has a single successor."""
        return bool(self.probs[self.word_class[prev], cur, 0] == 1.0)

    def sample(self, n: int, rng: np.random.Generator) -> list[int]:
        """Sample ``n`` word indices (``n >= 2``) starting from a random state."""
        w = len(self.words)
        out = [int(rng.integers(w)), int(rng.integers(w))]
        u = rng.random(n)
        cum = np.cumsum(self.probs, axis=-1)
        while len(out) < n:
            c = self.word_class[out[-2]]
            k = int(np.searchsorted(cum[c, out[-1]], u[len(out)], side="right"))
            out.append(int(self.successors[c, out[-1], min(k, 2)]))
        return out[:n]


@functools.cache
def markov_chain() -> MarkovChain:
    """The filler-text Markov chain (deterministic, cached)."""
    words = vocabulary().filler
    w = len(words)
    rng = np.random.default_rng(7)
    word_class = rng.integers(0, NUM_CLASSES, size=w)
    successors = rng.integers(0, w, size=(NUM_CLASSES, w, 3))
    count = rng.choice([1, 2, 3], size=(NUM_CLASSES, w), p=[0.5, 0.3, 0.2])
    raw = rng.dirichlet(np.ones(3), size=(NUM_CLASSES, w))
    probs = np.where(np.arange(3) < count[..., None], raw, 0.0)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return MarkovChain(words=words, word_class=word_class, successors=successors, probs=probs)
