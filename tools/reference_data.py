"""Token-level training documents of the reference model (the chat formats of `moa_plan.tasks`).

Documents are built directly as token ids for speed, in exactly the layout the chat template
produces for `moa_plan.tasks` records (checked by ``tools/train_reference_model.py --check``):
``<s> <|user|> line k v ... what is line k <|assistant|> k v <|end|> <|user|> ...``.
Each document comes with per-target loss weights: 0 on tokens that are random by construction
(keys and values on first appearance, the asked key), 2 on answers, 1 elsewhere, and a kind
code per target (0 other, 1 lines answer, 2 needle answer, 3 rewrite answer) for accuracies.
"""

from __future__ import annotations

import numpy as np

from moa_plan.tasks import markov_chain, vocabulary

OTHER, LINES_ANSWER, NEEDLE_ANSWER, REWRITE_ANSWER = 0, 1, 2, 3
ANSWER_WEIGHT = 2.0


class Builder:
    """Builds one document of exactly ``length`` tokens: ids, target weights and kinds."""

    def __init__(self, tokenizer: object) -> None:
        vocab = vocabulary()
        tid = tokenizer.convert_tokens_to_ids  # type: ignore[attr-defined]
        self.tok = {w: tid(w) for w in (*vocab.template, "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")}
        self.keys = np.array([tid(k) for k in vocab.keys])
        self.values = np.array([tid(v) for v in vocab.values])
        self.filler = np.array([tid(w) for w in vocab.filler])
        self.chain = markov_chain()
        self.system = [
            self.tok[w] for w in ["you", "are", "a", "helpful", "assistant", ".", "answer", "with", "the", "value"]
        ]

    def _start(self, rng: np.random.Generator) -> tuple[list[int], list[float], list[int]]:
        ids = [self.tok["<s>"]]
        if rng.random() < 0.2:
            ids += [self.tok["<|system|>"], *self.system]
        ids.append(self.tok["<|user|>"])
        return ids, [1.0] * len(ids), [OTHER] * len(ids)

    def words(self, text: str) -> list[int]:
        return [self.tok[w] for w in text.split()]

    def lines(
        self, rng: np.random.Generator, length: int, rewrite: bool = False, compact: bool = False
    ) -> tuple[list, list, list]:
        """Lines with inline questions; ``compact`` asks ``what is line K V`` with no chat turn.

        The compact question puts the value right after the asked key, which is plain induction
        with no distracting copy of the key (in a chat turn the key is followed by
        ``<|assistant|>``); it grows the induction circuit that the chat form then reuses.
        """
        ids, w, kind = self._start(rng)
        # Dense inline questions carry the retrieval signal; a few sparse documents keep the
        # evaluation's shape (a long block of lines, then the question).
        p_question = rng.uniform(0.03, 0.2) if rng.random() < 0.2 else rng.uniform(0.3, 0.8)
        perm = rng.permutation(len(self.keys))
        vals = rng.integers(0, len(self.values), size=len(perm))
        n = 0
        while len(ids) < length and n < len(perm):
            ids += [self.tok["line"], int(self.keys[perm[n]]), int(self.values[vals[n]])]
            w += [1.0, 0.0, 0.0]
            kind += [OTHER] * 3
            n += 1
            if n >= 2 and rng.random() < p_question:
                a = int(rng.integers(n))
                if rewrite and n > 6 and rng.random() < 0.3:
                    self._rewrite(ids, w, kind, perm, vals, int(rng.integers(n - 4)))
                    continue
                if compact:
                    ids += [*self.words("what is line"), int(self.keys[perm[a]]), int(self.values[vals[a]])]
                    w += [1.0, 1.0, 1.0, 0.0, ANSWER_WEIGHT]
                    kind += [OTHER] * 4 + [LINES_ANSWER]
                    continue
                ids += [*self.words("what is line"), int(self.keys[perm[a]]), self.tok["<|assistant|>"]]
                w += [1.0, 1.0, 1.0, 0.0, 1.0]
                kind += [OTHER] * 5
                ids += [int(self.keys[perm[a]]), int(self.values[vals[a]]), self.tok["<|end|>"], self.tok["<|user|>"]]
                w += [1.0, ANSWER_WEIGHT, 1.0, 1.0]
                kind += [OTHER, LINES_ANSWER, OTHER, OTHER]
        return ids[:length], w[:length], kind[:length]

    def _rewrite(self, ids: list, w: list, kind: list, perm: np.ndarray, vals: np.ndarray, a: int) -> None:
        ids += [*self.words("list the lines from"), int(self.keys[perm[a]]), self.tok["<|assistant|>"]]
        w += [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
        kind += [OTHER] * 6
        for j in range(a, a + 4):
            ids += [self.tok["line"], int(self.keys[perm[j]]), int(self.values[vals[j]])]
            w += [ANSWER_WEIGHT] * 3
            kind += [REWRITE_ANSWER] * 3
        # The rewritten lines start with the key (no leading "line"), as in moa_plan.tasks.
        del ids[-12], w[-12], kind[-12]
        ids += [self.tok["<|end|>"], self.tok["<|user|>"]]
        w += [1.0, 1.0]
        kind += [OTHER, OTHER]

    def _filler(self, rng: np.random.Generator, n: int) -> list[int]:
        return [int(self.filler[i]) for i in self.chain.sample(max(n, 2), rng)[:n]]

    def needles(self, rng: np.random.Generator, length: int, multi: bool) -> tuple[list, list, list]:
        """Passkey (one needle) or multi-key (2-8 needles) in filler, questions at the end."""
        ids, w, kind = self._start(rng)
        count = int(rng.integers(2, 9)) if multi else 1
        keys = rng.choice(len(self.keys), count, replace=False)
        vals = rng.integers(0, len(self.values), size=count)
        if multi:
            needles = [
                [*self.words("remember magic"), int(self.keys[k]), int(self.values[v]), self.tok["."]]
                for k, v in zip(keys, vals, strict=False)
            ]
            nw = [[1.0, 1.0, 0.0, 0.0, 1.0]] * count
            asks = rng.permutation(count)[: int(rng.integers(1, count + 1))]
            questions = [
                (
                    [*self.words("what is magic"), int(self.keys[keys[a]])],
                    [int(self.keys[keys[a]]), int(self.values[vals[a]])],
                )
                for a in asks
            ]
        else:
            needles = [[*self.words("remember the passkey"), int(self.values[vals[0]]), self.tok["."]]]
            nw = [[1.0, 1.0, 1.0, 0.0, 1.0]]
            questions = [(self.words("what is the passkey"), [self.tok["passkey"], int(self.values[vals[0]])])]
        tail: list[int] = []
        tw: list[float] = []
        tk: list[int] = []
        for q, ans in questions:
            qw = [1.0] * (len(q) - 1) + [0.0 if multi else 1.0]
            tail += [*q, self.tok["<|assistant|>"], *ans, self.tok["<|end|>"], self.tok["<|user|>"]]
            tw += [*qw, 1.0, 1.0, ANSWER_WEIGHT, 1.0, 1.0]
            tk += [OTHER] * (len(q) + 2) + [NEEDLE_ANSWER, OTHER, OTHER]
        tail, tw, tk = tail[:-1], tw[:-1], tk[:-1]
        n_fill = length - len(ids) - len(tail) - sum(len(x) for x in needles)
        if n_fill < 4:
            return self.lines(rng, length)
        fill = self._filler(rng, n_fill)
        cuts = sorted(int(c) for c in rng.integers(0, n_fill + 1, size=count))
        prev = 0
        for cut, needle, weights in zip(cuts, needles, nw, strict=False):
            ids += fill[prev:cut]
            w += [1.0] * (cut - prev)
            kind += [OTHER] * (cut - prev)
            ids += needle
            w += weights
            kind += [OTHER] * len(needle)
            prev = cut
        ids += fill[prev:] + tail
        w += [1.0] * (n_fill - prev) + tw
        kind += [OTHER] * (n_fill - prev) + tk
        return ids[:length], w[:length], kind[:length]

    def repeat(self, rng: np.random.Generator, length: int) -> tuple[list, list, list]:
        """Random key/value tokens with a segment repeated later: the classic induction-head signal.

        Lines retrieval is induction (the answer's key, then the value that followed it); without
        a previous-token head the model sits on a plateau near chance, and repeated random
        sequences grow one quickly. The segment's length and both positions are random, so no
        fixed positional offset solves it (a document that is a sequence and its copy at a fixed
        half-length offset is solved by a positional head, which teaches nothing about lines).
        Loss only on the repeated tokens after the first (everything else is random).
        """
        pool = np.concatenate([self.keys, self.values])
        ids = [self.tok["<s>"], *(int(x) for x in pool[rng.integers(0, len(pool), size=length - 1)])]
        w = [1.0] + [0.0] * (length - 1)
        m = int(rng.integers(4, max(5, (length - 1) // 3)))
        a = int(rng.integers(1, length - 2 * m))
        b = int(rng.integers(a + m, length - m + 1))
        ids[b : b + m] = ids[a : a + m]
        w[b + 1 : b + m] = [1.0] * (m - 1)
        return ids, w, [OTHER] * length

    def local(self, rng: np.random.Generator, length: int) -> tuple[list, list, list]:
        ids = [self.tok["<s>"], *self._filler(rng, length - 1)]
        return ids, [1.0] * length, [OTHER] * length

    def document(self, rng: np.random.Generator, length: int, mix: dict[str, float]) -> tuple[list, list, list]:
        names = list(mix)
        p = np.array([mix[k] for k in names])
        task = names[int(rng.choice(len(names), p=p / p.sum()))]
        if task == "lines":
            return self.lines(rng, length)
        if task == "compact":
            return self.lines(rng, length, compact=True)
        if task == "rewrite":
            return self.lines(rng, length, rewrite=True)
        if task == "local":
            return self.local(rng, length)
        if task == "repeat":
            return self.repeat(rng, length)
        return self.needles(rng, length, multi=task == "multikey")


def batch(builder: Builder, rng: np.random.Generator, length: int, rows: int, mix: dict[str, float]) -> tuple:
    """Arrays ids [rows, length] int64, weights and kinds [rows, length - 1] for the targets."""
    docs = [builder.document(rng, length, mix) for _ in range(rows)]
    ids = np.array([d[0] for d in docs], dtype=np.int64)
    w = np.array([d[1] for d in docs], dtype=np.float32)[:, 1:]
    kind = np.array([d[2] for d in docs], dtype=np.int64)[:, 1:]
    return ids, w, kind
