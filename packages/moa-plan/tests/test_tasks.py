"""Tests of the synthetic task generators and scorers (moa_plan.tasks)."""

from __future__ import annotations

import re

import pytest

from moa_plan import MoaError, Record, read_records, write_records
from moa_plan.tasks import (
    CHAT_TASKS,
    TASKS,
    TaskError,
    accuracy,
    generate,
    generate_lines,
    generate_local,
    generate_multikey,
    generate_passkey,
    generate_rewrite,
    markov_chain,
    score,
    to_messages,
    vocabulary,
    word_count,
)

LENGTHS = [128, 512, 2048]


def char_count(text: str) -> int:
    """A second, non-word tokenizer stand-in: one token per 4 characters of each word."""
    return sum(-(-len(w) // 4) for w in text.split())


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_by_seed(task: str) -> None:
    a = generate(task, 5, target_length=300, seed=3)
    b = generate(task, 5, target_length=300, seed=3)
    c = generate(task, 5, target_length=300, seed=4)
    assert a == b
    assert [r.context for r in a] != [r.context for r in c]


def test_record_i_independent_of_n() -> None:
    assert generate_lines(3, target_length=256, seed=1)[2] == generate_lines(7, target_length=256, seed=1)[2]


@pytest.mark.parametrize("counter", [word_count, char_count], ids=["words", "chars"])
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", ["lines", "passkey", "multikey", "rewrite"])
def test_hits_length_within_one_line(task: str, length: int, counter) -> None:
    overhead = 3
    for r in generate(task, 4, target_length=length, count_tokens=counter, overhead=overhead, seed=0):
        total = counter(r.context) + counter(r.question) + overhead
        # One line: a key-value line (3 words) or a filler chunk (8 words), in either counter.
        one_line = max(counter("line bako 12345"), counter(" ".join(vocabulary().filler[:8])), 8)
        assert length - one_line <= total <= length
        assert r.metadata["target_length"] == length
        assert r.metadata["task"] == task


@pytest.mark.parametrize("length", LENGTHS)
def test_local_length_and_answer(length: int) -> None:
    chain = markov_chain()
    index = {w: n for n, w in enumerate(chain.words)}
    for r in generate_local(6, target_length=length, overhead=1, seed=2):
        words = r.context.split()
        assert length - 1 - 16 <= len(words) <= length - 1
        prev, cur = index[words[-2]], index[words[-1]]
        # Oracle: the chain's table itself says the state has exactly one successor, the answer.
        assert chain.is_deterministic(prev, cur)
        assert chain.words[chain.successors[chain.word_class[prev], cur, 0]] == r.answer
        assert r.metadata["format"] == "plain"


def test_lines_answer_and_depth() -> None:
    records = generate_lines(30, target_length=600, seed=5)
    for i, r in enumerate(records):
        lines = r.context.split("\n")
        table = dict(line.split()[1:] for line in lines)
        key = r.question.split()[-1]
        assert r.question == f"what is line {key}"
        assert r.answer == f"{key} {table[key]}"
        assert len(table) == len(lines), "keys are unique within a context"
        j = [line.split()[1] for line in lines].index(key)
        decile = r.metadata["depth_decile"]
        assert decile == i % 10
        assert decile * len(lines) // 10 <= j < max(decile * len(lines) // 10 + 1, (decile + 1) * len(lines) // 10)


def test_passkey_and_multikey_answers() -> None:
    for r in generate_passkey(10, target_length=400, seed=1):
        found = re.findall(r"remember the passkey (\d+) \.", r.context)
        assert [f"passkey {v}" for v in found] == [r.answer]
        assert r.question == "what is the passkey"
        chunks = r.context.split("\n")
        where = next(n for n, c in enumerate(chunks) if c.startswith("remember"))
        d = r.metadata["depth_decile"]
        assert d * len(chunks) // 10 - 1 <= where <= (d + 1) * len(chunks) // 10 + 1
    for r in generate_multikey(10, target_length=400, seed=1, num_needles=5):
        needles = dict(re.findall(r"remember magic (\w+) (\d+) \.", r.context))
        assert len(needles) == 5
        key = r.question.split()[-1]
        assert r.answer == f"{key} {needles[key]}"


def test_rewrite_answer_is_the_following_lines() -> None:
    for r in generate_rewrite(10, target_length=500, seed=0, num_rewrite=3):
        lines = r.context.split("\n")
        key = r.question.split()[-1]
        j = [line.split()[1] for line in lines].index(key)
        assert "line " + r.answer == " ".join(lines[j : j + 3])


def test_words_are_single_vocabulary_words() -> None:
    vocab = set(vocabulary().words())
    assert len(vocab) == len(vocabulary().words())
    for task in TASKS:
        for r in generate(task, 3, target_length=200, seed=0):
            assert set((r.context + " " + r.question + " " + (r.answer or "")).split()) <= vocab


def test_scorer_exact() -> None:
    r = Record(task="lines", context="line bako 12345", question="what is line bako", answer="bako 12345")
    assert score(r, "bako 12345") == 1.0
    assert score(r, " bako\n12345 ") == 1.0
    assert score(r, "12345") == 0.0
    assert score(r, "bako 1234") == 0.0
    assert score(r, "bako 12345 12345") == 0.0
    assert score(r, "") == 0.0
    assert accuracy([r, r], ["bako 12345", "no"]) == 0.5
    with pytest.raises(TaskError, match="one prediction per record"):
        accuracy([r], [])
    with pytest.raises(TaskError, match="no reference answer"):
        score(Record(task="rewrite", context="x"), "x")


def test_messages_and_records_round_trip(tmp_path) -> None:
    r = generate_lines(1, target_length=100)[0]
    assert to_messages(r) == [{"role": "user", "content": f"{r.context}\n{r.question}"}]
    assert to_messages(r, system="hi")[0] == {"role": "system", "content": "hi"}
    with pytest.raises(TaskError, match="plain-text"):
        to_messages(generate_local(1, target_length=100)[0])
    records = [g(2, target_length=150, seed=0)[0] for g in (generate_lines, generate_passkey, generate_local)]
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records
    assert {r.metadata["format"] for r in generate(CHAT_TASKS[0], 2, target_length=100)} == {"chat"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: generate("nope", 1, target_length=100), "unknown task"),
        (lambda: generate("lines", 1, target_length=10), "too short"),
        (lambda: generate("lines", 0, target_length=100), "must be positive"),
        (lambda: generate("lines", 1, target_length=100_000), "distinct keys"),
        (lambda: generate("multikey", 1, target_length=100, num_needles=1), "at least 2"),
        (lambda: generate("lines", 1, target_length=100, colour=3), "bad option"),
    ],
)
def test_bad_input_is_a_moa_error(call, message: str) -> None:
    with pytest.raises(MoaError, match=message):
        call()
