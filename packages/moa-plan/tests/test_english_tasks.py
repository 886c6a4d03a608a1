"""Tests of the English tasks (moa_plan.tasks.english) on small synthetic essays, and on the real ones if fetched."""

from __future__ import annotations

import re

import pytest

from moa_plan import MoaError, Record
from moa_plan.assets import NEEDLE, AssetError, essays_dir, read_essays
from moa_plan.tasks import (
    ENGLISH_TASKS,
    RETRIEVAL_TASKS,
    TaskError,
    completion_prompt,
    essay_ppl_texts,
    essay_split,
    generate,
    generate_lines,
    score,
    split_sentences,
    to_messages,
    word_count,
)
from moa_plan.tasks.english import PIZZA_NEEDLES
from moa_plan.tasks.facts import RECALL_TASKS

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def char_count(text: str) -> int:
    """A second tokenizer stand-in: one token per 4 characters of each word."""
    return sum(-(-len(w) // 4) for w in text.split())


def _essay(number: int) -> str:
    """Paragraphs of 8-12 word sentences, each paragraph one line unique to its essay."""
    paragraphs = []
    for p in range(6):
        sentences = []
        for s in range(8):
            words = [WORDS[(number * 7 + p * 3 + s + j) % len(WORDS)] for j in range(6 + (s + p) % 5)]
            sentences.append(f"Essay{number} part{p} line{s} " + " ".join(words) + ".")
        # Some paragraphs lost their break before the next one, as in the real files ("great.It").
        paragraphs.append(" ".join(sentences) + ("" if p % 2 else "\n"))
    return f"Title {number}\n\n" + "".join(paragraphs)


ESSAYS = {f"essay{n:02d}": _essay(n) for n in range(16)}
CALIBRATION, EVALUATION = essay_split(ESSAYS)
# The longest sentence of the synthetic essays, in either counter: the length tolerance.
SENTENCE = max(max(c(s) for e in ESSAYS.values() for s in split_sentences(e)) for c in (word_count, char_count))


def rendered(record: Record) -> str:
    if record.metadata["format"] == "completion":
        return completion_prompt(record)
    if record.metadata["format"] == "chat":
        return to_messages(record)[0]["content"]
    return record.context


def gen(task: str, n: int = 10, length: int = 600, **kw: object) -> list[Record]:
    return generate(task, n, target_length=length, essays=ESSAYS, **kw)  # type: ignore[arg-type]


def test_synthetic_essays_fall_on_both_sides() -> None:
    assert len(CALIBRATION) >= 4 and len(EVALUATION) >= 6


def test_split_is_disjoint_covers_all_and_stable() -> None:
    calibration, evaluation = essay_split(ESSAYS)
    assert not set(calibration) & set(evaluation)
    assert sorted(calibration + evaluation) == sorted(ESSAYS)
    assert essay_split(list(ESSAYS)) == (calibration, evaluation)
    # An essay keeps its side whatever other essays are present.
    some = {k: v for i, (k, v) in enumerate(ESSAYS.items()) if i % 3}
    sub_cal, sub_eval = essay_split(some)
    assert set(sub_cal) <= set(calibration) and set(sub_eval) <= set(evaluation)


def test_split_sentences_concatenates_back() -> None:
    text = "One. Two?  Three!\nFour.Five (six.) Seven U.S. eight e.g. nine"
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert pieces[:4] == ["One.", " Two?", "  Three!", "\nFour."]
    assert "Five (six.)" in pieces


@pytest.mark.parametrize("task", ENGLISH_TASKS)
def test_deterministic_by_seed_and_index(task: str) -> None:
    a, b, c = gen(task, 4, seed=3), gen(task, 4, seed=3), gen(task, 4, seed=4)
    assert a == b
    assert [r.context for r in a] != [r.context for r in c]
    assert gen(task, 7, seed=3)[3] == a[3]


FORMED = [(t, f) for t in RETRIEVAL_TASKS for f in ("completion", "chat")] + [("summary", None), ("essay-ppl", None)]


@pytest.mark.parametrize("counter", [word_count, char_count], ids=["words", "chars"])
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize(("task", "form"), FORMED)
def test_hits_length_within_a_sentence(task: str, form: str | None, length: int, counter) -> None:  # type: ignore[no-untyped-def]
    overhead = 3
    records = gen(task, 10, length, count_tokens=counter, overhead=overhead, form=form)
    one = {
        "passkey-en": counter("There and back again."),
        "lines-en": counter("line lonely-lighthouse: REGISTER_CONTENT is <50000>"),
    }
    for r in records:
        total = counter(rendered(r)) + overhead
        assert length - one.get(task, SENTENCE) <= total <= length, (task, r.metadata)
        assert r.metadata["target_length"] == length and r.metadata["task"] == task


def test_forms_and_defaults() -> None:
    (niah,) = gen("niah", 1)
    assert niah.metadata["format"] == "completion"
    assert completion_prompt(niah).endswith(
        "\n\nQuestion: What is the best thing to do in San Francisco?\nAnswer: The best thing to do in San Francisco is"
    )
    assert niah.answer == "eat a sandwich and sit in Dolores Park on a sunny day."
    (chat,) = gen("niah", 1, form="chat")
    assert chat.answer == NEEDLE and chat.question == "What is the best thing to do in San Francisco?"
    assert to_messages(chat) == [
        {"role": "user", "content": f"{chat.context}\nWhat is the best thing to do in San Francisco?"}
    ]
    (passkey,) = gen("passkey-en", 1)
    assert completion_prompt(passkey).endswith("\nWhat is the pass key? The pass key is")
    assert passkey.context.startswith("There is an important info hidden inside a lot of irrelevant text. Find it and")
    (multi,) = gen("niah-multi", 1)
    assert completion_prompt(multi).endswith("Answer: The secret ingredients needed to build the perfect pizza are")
    (lines,) = gen("lines-en", 1)
    key = lines.metadata["key"]
    assert completion_prompt(lines).endswith(
        f"\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
        f" The <REGISTER_CONTENT> in line {key} is <"
    )
    (summary,) = gen("summary", 1)
    assert summary.metadata["format"] == "chat" and summary.answer is None
    assert summary.question == "Summarize the essay above."
    with pytest.raises(TaskError, match="not in completion form"):
        completion_prompt(summary)


@pytest.mark.parametrize("counter", [word_count, char_count], ids=["words", "chars"])
def test_niah_depth_from_token_counts(counter) -> None:  # type: ignore[no-untyped-def]
    for r in gen("niah", 20, 800, count_tokens=counter):
        assert r.metadata["depth_decile"] == r.metadata["index"] % 10  # type: ignore[operator]
        depth = r.metadata["depth_decile"] / 9 * 100  # type: ignore[operator]
        assert r.metadata["depth_percent"] == pytest.approx(depth)
        assert r.context.count(NEEDLE) == 1
        # Oracle: tokens before the needle vs the same fraction of the haystack without it.
        before = counter(r.context[: r.context.index(NEEDLE)])
        haystack = counter(r.context.replace(NEEDLE, ""))
        assert depth / 100 * haystack - SENTENCE - 2 <= before <= depth / 100 * haystack + 2
        assert r.metadata["needle_token"] == before
        # At a sentence boundary, on its own line.
        assert f"\n{NEEDLE}\n" in f"\n{r.context}\n"


def test_niah_multi_spreads_needles_from_depth_to_end() -> None:
    for r in gen("niah-multi", 10, 900):
        depth = r.metadata["depth_percent"]
        where = [r.context.index(x) for x in PIZZA_NEEDLES]
        assert where == sorted(where)
        haystack = r.context
        for x in PIZZA_NEEDLES:
            haystack = haystack.replace(x, "")
        total = word_count(haystack)
        for j, pos in enumerate(where):
            expected = (depth + j * (100 - depth) / 3) / 100 * total  # type: ignore[operator]
            before = word_count(r.context[:pos]) - sum(word_count(PIZZA_NEEDLES[i]) for i in range(j))
            assert expected - SENTENCE - 2 <= before <= expected + 2


def test_passkey_depth_and_key() -> None:
    for r in gen("passkey-en", 10, 700):
        key = r.answer
        assert key is not None and re.fullmatch(r"\d{5}", key)
        info = f"The pass key is {key}. Remember it. {key} is the pass key."
        assert r.context.count(info) == 1
        body = r.context.split("\n", 1)[1]
        before = word_count(body[: body.index(info)])
        filler = word_count(body.replace(info, ""))
        depth = r.metadata["depth_percent"] / 100  # type: ignore[operator]
        assert depth * filler - 5 <= before <= depth * filler + 1


def test_lines_asked_line_and_values() -> None:
    for r in gen("lines-en", 10, 1500):
        body = r.context.split("Now the record start:\n\n", 1)[1].split("\n")
        found = [re.fullmatch(r"line ([a-z]+-[a-z]+): REGISTER_CONTENT is <(\d+)>", line) for line in body]
        assert all(found)
        names = [m.group(1) for m in found if m]
        values = {m.group(1): int(m.group(2)) for m in found if m}
        assert len(set(names)) == len(names) and all(1 <= v <= 50_000 for v in values.values())
        key = r.metadata["key"]
        assert r.answer == str(values[key])  # type: ignore[index]
        j = names.index(key)  # type: ignore[arg-type]
        assert j == r.metadata["line_index"] == round(r.metadata["depth_percent"] / 100 * (len(names) - 1))  # type: ignore[operator]


def _unique_lines(essays: dict[str, str], names: list[str]) -> set[str]:
    """Lines (paragraphs, as the files wrap them) of these essays that occur in no other essay."""
    others = "\n".join(text for n, text in essays.items() if n not in names)
    lines = {x.strip() for n in names for x in essays[n].splitlines() if len(x.strip()) >= 40}
    return {x for x in lines if x not in others}


def _unique_sentences(essays: dict[str, str], names: list[str]) -> set[str]:
    """Sentences of at least 40 characters of these essays that occur in no other essay."""
    others = "\n".join(text for n, text in essays.items() if n not in names)
    found = {x.strip() for n in names for x in split_sentences(essays[n]) if len(x.strip()) >= 40}
    return {x for x in found if x not in others}


def _check_no_leak(essays: dict[str, str], length: int, n: int) -> None:
    calibration, evaluation = essay_split(essays)
    cal_lines, eval_lines = _unique_lines(essays, calibration), _unique_lines(essays, evaluation)
    assert cal_lines and eval_lines
    for task in ("niah", "niah-multi", "essay-ppl"):
        for r in generate(task, n, target_length=length, essays=essays):
            assert not any(line in r.context for line in cal_lines), task
            assert any(line in r.context for line in eval_lines)
    # Sentence by sentence too: ``codes`` repeats a passage of sentences, not whole lines of a file.
    cal_sentences, eval_sentences = _unique_sentences(essays, calibration), _unique_sentences(essays, evaluation)
    for task in ("summary", "continue", *RECALL_TASKS):
        for r in generate(task, n, target_length=length, essays=essays):
            assert not any(line in r.context + (r.answer or "") for line in eval_lines), task
            assert not any(x in r.context for x in eval_sentences), task
            assert task == "codes" or any(line in r.context for line in cal_lines), task
            assert any(x in r.context for x in cal_sentences), task
    for r in generate("summary", n, target_length=length, essays=essays):
        assert NEEDLE not in r.context and not any(x in r.context for x in PIZZA_NEEDLES)
        assert set(str(r.metadata["essays"]).split(",")) <= set(calibration)


def test_no_essay_leaks_across_the_split_synthetic() -> None:
    _check_no_leak(ESSAYS, 700, 10)


@pytest.mark.skipif(not essays_dir(required=False).is_dir(), reason="the Paul Graham essays are not fetched")
def test_real_essays_split_and_no_leak() -> None:
    essays = read_essays()
    calibration, evaluation = essay_split(essays)
    assert sorted(calibration + evaluation) == sorted(essays) and not set(calibration) & set(evaluation)
    assert 0.3 <= len(calibration) / len(essays) <= 0.5
    _check_no_leak(essays, 2048, 10)


@pytest.mark.parametrize("counter", [word_count, char_count], ids=["words", "chars"])
def test_continue_is_a_calibration_passage_and_the_prose_after_it(counter) -> None:  # type: ignore[no-untyped-def]
    from moa_plan.tasks.english import CONTINUE_ANSWER_TOKENS

    length, overhead = 600, 2
    records = gen("continue", 8, length, count_tokens=counter, overhead=overhead)
    assert len({r.context for r in records}) == 8
    for r in records:
        assert r.metadata["format"] == "plain" and r.question == "" and r.answer
        # The prompt reaches the length (calibration cuts it to fit with its answer), by less than a sentence.
        assert length <= counter(r.context) + overhead <= length + SENTENCE
        assert CONTINUE_ANSWER_TOKENS <= counter(r.answer) <= CONTINUE_ANSWER_TOKENS + SENTENCE
        # Oracle: the answer's first sentence comes right after the context's last one in a calibration essay
        # (or starts the next essay of the stream).
        last = split_sentences(r.context)[-1].strip()
        following = split_sentences(r.answer.lstrip("\n"))[0].strip()
        owners = [n for n in CALIBRATION if last in ESSAYS[n]]
        assert owners, r.metadata
        pieces = [x.strip() for x in split_sentences(ESSAYS[owners[0]])]
        at = pieces.index(last)
        assert r.answer.startswith("\n\n") if at == len(pieces) - 1 else pieces[at + 1] == following


def test_essay_ppl_texts_are_evaluation_essays_cut_to_length() -> None:
    texts = essay_ppl_texts(5, 500, word_count, 2, essays=ESSAYS)
    assert texts == essay_ppl_texts(5, 500, word_count, 2, essays=ESSAYS)
    assert len(set(texts)) == 5
    for text in texts:
        assert 500 - SENTENCE <= word_count(text) <= 500
        first = text.split("\n", 1)[0]
        owner = [n for n, e in ESSAYS.items() if e.startswith(first)]
        assert owner and owner[0] in EVALUATION


def test_essay_ppl_texts_of_the_calibration_side_read_only_calibration_essays() -> None:
    texts = essay_ppl_texts(5, 500, word_count, 2, essays=ESSAYS, side="calibration")
    assert len(set(texts)) == 5
    for text in texts:
        assert 500 - SENTENCE <= word_count(text) <= 500
        owners = {m.group(1) for m in re.finditer(r"Essay(\d+) part", text)}
        assert owners and all(f"essay{int(o):02d}" in CALIBRATION for o in owners)
    assert not set(texts) & set(essay_ppl_texts(5, 500, word_count, 2, essays=ESSAYS))
    with pytest.raises(TaskError, match="unknown essay side"):
        essay_ppl_texts(1, 500, essays=ESSAYS, side="both")
    with pytest.raises(TaskError, match="must be positive"):
        essay_ppl_texts(0, 500, essays=ESSAYS, side="calibration")


def test_errors() -> None:
    short = {n: ESSAYS[n] for n in EVALUATION[:1]} | {n: ESSAYS[n] for n in CALIBRATION[:1]}
    with pytest.raises(TaskError, match=r"^the 1 evaluation essays are too short for a niah prompt of 5000 tokens$"):
        generate("niah", 1, target_length=5000, essays=short)
    with pytest.raises(TaskError, match="calibration essays are too short"):
        generate("summary", 1, target_length=5000, essays=short)
    with pytest.raises(TaskError, match="falls in the calibration split"):
        generate("summary", 1, target_length=500, essays={n: ESSAYS[n] for n in EVALUATION})
    with pytest.raises(TaskError, match="only the chat form"):
        gen("summary", 1, form="completion")
    with pytest.raises(TaskError, match="unknown form"):
        gen("niah", 1, form="prose")
    with pytest.raises(TaskError, match="too short for a task prompt"):
        gen("niah", 1, length=10)
    with pytest.raises(TaskError, match="takes no form or essays"):
        generate("lines", 1, target_length=100, form="chat")
    with pytest.raises(TaskError, match=r"unknown task 'nope'; expected one of lines, .*niah"):
        generate("nope", 1, target_length=100)


def test_default_essays_come_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path))
    with pytest.raises(AssetError, match="run `make assets`"):
        generate("niah", 1, target_length=500)
    assert isinstance(AssetError("x"), MoaError)
    # passkey-en and lines-en read no essays.
    assert len(generate("passkey-en", 2, target_length=300)) == 2
    assert len(generate("lines-en", 2, target_length=300)) == 2


def test_toy_tasks_unchanged() -> None:
    assert generate("lines", 3, target_length=256, seed=1) == generate_lines(3, target_length=256, seed=1)


def _record(task: str, answer: str, **meta: object) -> Record:
    return Record(task=task, context="", answer=answer, metadata=meta)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "answer", "prediction", "expected"),
    [
        ("niah", "eat a sandwich", " eat a sandwich and sit in Dolores Park on a sunny day.", 1.0),
        ("niah", "eat a sandwich", " to eat a SANDWICH in dolores\npark", 1.0),
        ("niah", "eat a sandwich", " eat a sandwich at the Golden Gate", 0.0),
        ("niah", "eat a sandwich", " sit in Dolores Park", 0.0),
        ("niah", "eat a sandwich", "", 0.0),
        ("niah-multi", "figs", " figs, prosciutto, and goat cheese.", 1.0),
        ("niah-multi", "figs", " Figs and Prosciutto", 2 / 3),
        ("niah-multi", "figs", " goat\ncheese", 1 / 3),
        ("niah-multi", "figs", " cheese and goats", 0.0),
        ("passkey-en", "12345", " 12345. Remember it.", 1.0),
        ("passkey-en", "12345", " 12345", 1.0),
        ("passkey-en", "12345", " 1234 or 12345", 0.0),
        ("passkey-en", "12345", " 123456", 0.0),
        ("passkey-en", "12345", " the pass key", 0.0),
        ("lines-en", "24640", "24640>", 1.0),
        ("lines-en", "24640", " <24640>.", 1.0),
        ("lines-en", "24640", "2464", 0.0),
        ("lines-en", "7", "007>", 1.0),
    ],
)
def test_scorer_truth_table(task: str, answer: str, prediction: str, expected: float) -> None:
    assert score(_record(task, answer), prediction) == pytest.approx(expected)


def test_scorers_on_generated_records() -> None:
    for task in RETRIEVAL_TASKS:
        for form in ("completion", "chat"):
            (r,) = gen(task, 1, form=form)
            assert r.answer is not None and score(r, r.answer) == 1.0, (task, form)
            assert score(r, " I do not know.") == 0.0
    with pytest.raises(TaskError, match="no reference answer"):
        score(gen("summary", 1)[0], "a summary")


@pytest.mark.parametrize("task", RECALL_TASKS)
def test_recall_tasks_hide_lines_by_depth_and_ask_one(task: str) -> None:
    records = gen(task, 8, 800)
    assert records == gen(task, 8, 800) and records != gen(task, 8, 800, seed=1)
    for i, r in enumerate(records):
        meta = r.metadata
        assert meta["task"] == task and meta["format"] == "completion" and meta["depth_slot"] == i % 4
        line, reference = str(meta["line"]), str(meta["reference"])
        assert reference in line and r.context.count(line) == 1
        # Four lines of the task's form, one per quarter of the context (the asked one in its slot).
        pattern = {
            "facts": r"The special magic number for \S+ is \d{7}\.",
            "quotes": r'\S+ wrote in a notebook: "[^"]+"',
            "items": r"In the \w+, \w+ left the \w+\.",
            "codes": r"The \w+ locker opens with the code \d{4}\.",
        }[task]
        found = list(re.finditer(pattern, r.context))
        assert len(found) == 4
        depths = [m.start() / len(r.context) for m in found]
        assert depths == sorted(depths)
        asked = [m.group(0) for m in found].index(line)
        assert asked == meta["depth_slot"]
        # The question names the asked line's keys and no other line's.
        words = set(re.findall(r"[A-Z][a-z-]+|\w+", r.question)) - {"The", "Question", "Answer", "What"}
        keys = {
            w
            for w in words
            if w in line
            and w not in ("the", "in", "a", "is", "for", "number", "special", "magic", "locker", "opens", "code")
        }
        assert keys and all(not set(re.findall(r"\w[\w-]*", m.group(0))) >= keys for m in found if m.group(0) != line)
        prompt = completion_prompt(r)
        assert prompt.endswith(r.question) and word_count(prompt) <= 800


def test_codes_haystack_is_one_calibration_passage_repeated() -> None:
    def consecutive_in(name: str, passage: list[str]) -> bool:
        sentences = [s.strip() for s in split_sentences(ESSAYS[name]) if s.strip()]
        return any(sentences[k : k + len(passage)] == passage for k in range(len(sentences)))

    for r in gen("codes", 4, 700):
        haystack = r.context
        for line in re.findall(r"The \w+ locker opens with the code \d{4}\.", r.context):
            haystack = haystack.replace(f"\n{line}\n", " ")
        sentences = [s.strip() for s in split_sentences(haystack) if s.strip()]
        passage = list(dict.fromkeys(sentences))
        # Six distinct sentences, consecutive in one calibration essay, cycled in order to fill ~700 words.
        assert len(passage) == 6 and len(sentences) > 5 * 6
        assert sentences == [passage[k % 6] for k in range(len(sentences))]
        assert any(consecutive_in(n, passage) for n in CALIBRATION)
        assert not any(consecutive_in(n, passage[:1]) for n in EVALUATION)


def test_recall_task_options_and_errors() -> None:
    three = gen("facts", 3, 600, facts=3)
    assert all(len(re.findall(r"special magic number for \S+ is \d", r.context)) == 3 for r in three)
    assert gen("items", 2, 600, lines=2)[1].metadata["depth_slot"] == 1
    with pytest.raises(TaskError, match="only the completion form"):
        gen("quotes", 1, form="chat")
    with pytest.raises(TaskError, match="bad option for task 'items': depth"):
        gen("items", 1, depth=3)
    with pytest.raises(TaskError, match="too short"):
        gen("quotes", 1, 40)
    with pytest.raises(TaskError, match="positive n and lines"):
        gen("facts", 1, facts=0)
