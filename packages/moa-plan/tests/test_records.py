"""Records files: round trip and one clear error per malformed line."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_plan import Record, RecordsError, read_records, write_records


def test_roundtrip(tmp_path: Path) -> None:
    recs = [
        Record(task="lines", context="line a 1", question="a", answer="1", metadata={"depth": 3}),
        Record(task="summary", context="x y"),
    ]
    write_records(tmp_path / "r.jsonl", recs)
    assert read_records(tmp_path / "r.jsonl") == recs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "holds no records"),
        ("{not json}\n", "line 1 is not valid JSON"),
        ('{"task": "x", "context": "c"}\n{"task": "", "context": "c"}\n', "line 2: field task"),
        ('{"task": "x"}\n', "field context"),
        ('{"task": "x", "context": "c", "extra": 1}\n', "field extra"),
        ('{"task": "x", "context": 5}\n', "field context"),
    ],
)
def test_bad_records(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(RecordsError, match=expected):
        read_records(path)
