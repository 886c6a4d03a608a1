"""Calibration: answers really come from the model, spans cover exactly them, lengths are exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moa_plan import Record
from moa_profiler.calibration import CalibrationSettings, build_calibration, encode_prompt, reference_text
from moa_profiler.dataset import CalibrationSet, read_calibration, write_calibration
from moa_profiler.errors import CalibrationError
from moa_profiler.records import load_records
from moa_profiler.testing import SPECIAL, eos_biased, make_tokenizer, records_file


@pytest.fixture
def answered(tmp_path, model_factory, tokenizer):
    model = eos_biased(model_factory(layers=2, heads=4, kv_heads=2, seed=5, std=0.3))
    records = load_records(records_file(tmp_path / "r.jsonl", [60, 70, 75, 80, 130, 140, 150, 160]))
    settings = CalibrationSettings(buckets=(64, 128), max_new_tokens=12, batch_size=3, max_cut=0.7)
    return model, records, build_calibration(model, tokenizer, records, settings), settings


def test_answers_are_the_models_greedy_output(answered, tokenizer):
    """An unbatched, unpadded generate on the stored prompt yields exactly the stored answer tokens."""
    model, _, samples, settings = answered
    assert len(samples) == 8
    lengths = [s.answer_end - s.answer_start for s in samples]
    assert any(n < settings.max_new_tokens for n in lengths), "no answer stopped early; rounds untested"
    for s in samples:
        assert len(s.input_ids) == s.bucket
        assert s.answer_end == s.bucket
        prompt = torch.tensor([s.input_ids[: s.answer_start]])
        n = s.answer_end - s.answer_start
        direct = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=3)
        assert direct[0, prompt.shape[1] :].tolist() == s.input_ids[s.answer_start : s.answer_end]


def test_span_starts_after_generation_prompt_and_context_is_cut_in_the_middle(answered, tokenizer):
    """The prompt is template head + context head + context tail + question + template tail, by an independent build."""
    _, records, samples, _ = answered
    for s in samples:
        record = records[s.record_index]
        context = tokenizer(record.context, add_special_tokens=False).input_ids
        keep = len(context) - s.cut_tokens
        head, tail = keep // 2, keep - keep // 2
        before = tokenizer("<s> <|user|>", add_special_tokens=False).input_ids
        after = tokenizer(f"{record.question} <|end|> <|assistant|>", add_special_tokens=False).input_ids
        expected = before + context[:head] + context[len(context) - tail :] + after
        assert s.input_ids[: s.answer_start] == expected
        assert tokenizer.convert_ids_to_tokens(s.input_ids[s.answer_start - 1]) == "<|assistant|>"


def test_bucket_choice_and_errors(tokenizer, model_factory):
    model = model_factory()
    short = Record(task="t", context="w1 " * 20)
    long = Record(task="t", context="w1 " * 500)
    settings = CalibrationSettings(buckets=(64, 128), max_new_tokens=4)
    with pytest.raises(CalibrationError, match="shorter than every bucket"):
        build_calibration(model, tokenizer, [short], settings)
    with pytest.raises(CalibrationError, match="longer than every bucket"):
        build_calibration(model, tokenizer, [long], settings)
    with pytest.raises(CalibrationError, match="no record fits any bucket"):
        build_calibration(model, tokenizer, [short, long], CalibrationSettings(buckets=(64,), skip_unfit=True))
    with pytest.raises(CalibrationError, match="no records"):
        build_calibration(model, tokenizer, [], settings)


def test_chat_template_required(model_factory):
    with pytest.raises(CalibrationError, match="no chat template"):
        encode_prompt(make_tokenizer(chat_template=None), Record(task="t", context="w1 w2"))
    plain = encode_prompt(
        make_tokenizer(chat_template=None), Record(task="t", context="w1 w2", question="w3"), template="plain"
    )
    assert plain.ids[plain.c0 : plain.c1] == [len(SPECIAL) + 1, len(SPECIAL) + 2]


def test_template_whose_prompt_is_not_a_prefix_is_refused(model_factory):
    # The generation prompt says <|assistant|>, the rendered conversation <|system|>: no common prefix.
    bad = make_tokenizer(
        "{% for m in messages %}{{ '<|user|> ' + m['content'] + ' ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ '<|system|>' }}{% endif %}"
    )
    records = [Record(task="t", context="w1 " * 80)]
    with pytest.raises(CalibrationError, match="prefix of the conversation"):
        build_calibration(model_factory(), bad, records, CalibrationSettings(buckets=(64,), max_new_tokens=2))


def test_file_round_trip_and_validation(tmp_path: Path, answered):
    _, _, samples, _ = answered
    path = write_calibration(tmp_path / "c.parquet", CalibrationSet(samples=samples, provenance={"source": "x"}))
    back = read_calibration(path)
    assert back.samples == samples
    assert back.lengths() == [64, 128]
    assert back.provenance["source"] == "x"
    with pytest.raises(CalibrationError, match="empty"):
        write_calibration(tmp_path / "e.parquet", CalibrationSet(samples=[]))
    assert not (tmp_path / "e.parquet").exists()
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(CalibrationError, match="not a readable Parquet"):
        read_calibration(tmp_path / "junk.parquet")


def test_parquet_records(tmp_path: Path):
    import polars as pl

    path = tmp_path / "r.parquet"
    pl.DataFrame({"context": ["w1 w2", "w3"], "question": ["w4", None], "answer": [1, None]}).write_parquet(path)
    records = load_records(path)
    assert [r.context for r in records] == ["w1 w2", "w3"]
    assert [r.question for r in records] == ["w4", ""]
    assert records[0].answer == "1"
    pl.DataFrame({"text": ["w1"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CalibrationError, match="need a 'context' column"):
        load_records(tmp_path / "bad.parquet")
    pl.DataFrame({"context": []}, schema={"context": pl.String}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(CalibrationError, match="no records"):
        load_records(tmp_path / "empty.parquet")


def test_mixed_task_records_draw_each_task_per_length():
    from moa_plan import MoaError
    from moa_profiler.records import task_records

    def words(text: str) -> int:
        return len(text.split())

    records = task_records("rewrite, multikey", [300, 600], 3, count_tokens=words, overhead=10, seed=4)
    assert [r.task for r in records] == ["rewrite"] * 3 + ["multikey"] * 3 + ["rewrite"] * 3 + ["multikey"] * 3
    # Each one is the single-task draw (same seed per length), so mixing changes no record.
    alone = task_records("multikey", [300, 600], 3, count_tokens=words, overhead=10, seed=4)
    assert [r for r in records if r.task == "multikey"] == alone
    with pytest.raises(CalibrationError, match="no task"):
        task_records(" , ", [300], 1, count_tokens=words, overhead=0)
    with pytest.raises(MoaError, match="nosuch"):
        task_records("rewrite,nosuch", [300], 1, count_tokens=words, overhead=0)


def test_reference_answers_follow_the_fitted_prompt(tokenizer, model_factory):
    """answers="reference": the stored answer is the record's reference, tokenised alone; nothing is generated."""
    model = model_factory()
    words = " ".join(f"w{10 + k % 70}" for k in range(90))
    records = [
        Record(task="t", context=words, question="w2 w3", answer="w4 w5 w6"),
        Record(task="t", context="w7 " * 200, question="w2", metadata={"reference": "w8 w9", "format": "completion"}),
        Record(task="t", context="w3 " * 100, question="w2", answer="w5 " * 20),
    ]
    settings = CalibrationSettings(buckets=(64, 128), max_new_tokens=6, answers="reference")
    samples = build_calibration(model, tokenizer, records, settings)
    by_record = {s.record_index: s for s in samples}
    for i, want in ((0, "w4 w5 w6"), (1, "w8 w9"), (2, "w5 w5 w5 w5 w5 w5")):
        s = by_record[i]
        assert len(s.input_ids) == s.bucket and s.answer_end == s.bucket
        assert s.input_ids[s.answer_start :] == tokenizer(want, add_special_tokens=False).input_ids
    # The prompt, built independently: template head + context head + context tail + question + template tail.
    s = by_record[0]
    before = tokenizer("<s> <|user|>", add_special_tokens=False).input_ids
    after = tokenizer("w2 w3 <|end|> <|assistant|>", add_special_tokens=False).input_ids
    context = tokenizer(words, add_special_tokens=False).input_ids
    keep = s.bucket - 3 - len(before) - len(after)
    assert s.input_ids[: s.answer_start] == before + context[: keep // 2] + context[90 - (keep - keep // 2) :] + after
    completion = {"format": "completion"}
    assert (
        reference_text(Record(task="t", context="c", question="Answer: it is", answer="7", metadata=completion)) == " 7"
    )
    assert (
        reference_text(Record(task="t", context="c", question='wrote: "', answer="Hi.", metadata=completion)) == "Hi."
    )
    assert reference_text(Record(task="t", context="c", question="Q?", answer="7")) == "7"  # chat: the reply itself
    with pytest.raises(CalibrationError, match="no reference answer"):
        build_calibration(model, tokenizer, [Record(task="t", context=words, question="w2")], settings)
    with pytest.raises(CalibrationError, match="answers must be"):
        CalibrationSettings(buckets=(64,), answers="gold")
