"""The pipeline manifest skips a stage only when inputs and outputs are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa.manifest import Manifest, file_digest, inputs_digest
from moa_plan import MoaError


def test_skip_only_when_inputs_and_outputs_match(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out.txt"
    out.write_text("result")
    digest = inputs_digest({"density": 0.5}, [src])
    m = Manifest.load(tmp_path)
    assert not m.is_done("profile", digest)
    m.record("profile", digest, [out], {"samples": 3})
    again = Manifest.load(tmp_path)
    assert again.is_done("profile", digest)
    assert again.outputs("profile") == [out]
    # Changed parameter, changed input file, damaged output: all rerun.
    assert not again.is_done("profile", inputs_digest({"density": 0.25}, [src]))
    src.write_text("b")
    assert not again.is_done("profile", inputs_digest({"density": 0.5}, [src]))
    src.write_text("a")
    out.write_text("half")
    assert not again.is_done("profile", digest)
    out.unlink()
    assert not again.is_done("profile", digest)


def test_directory_digest_sees_content_and_names(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "a.bin").write_bytes(b"1")
    first = file_digest(d)
    (d / "a.bin").write_bytes(b"2")
    assert file_digest(d) != first
    (d / "a.bin").write_bytes(b"1")
    assert file_digest(d) == first
    (d / "a.bin").rename(d / "b.bin")
    assert file_digest(d) != first


def test_forget_after(tmp_path: Path) -> None:
    m = Manifest(root=tmp_path)
    m.stages = {"a": {}, "b": {}, "c": {}}
    m.forget_after("a", ["a", "b", "c"])
    assert list(m.stages) == ["a"]


def test_corrupt_manifest_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(MoaError, match="manifest is unreadable"):
        Manifest.load(tmp_path)


def test_every_compress_setting_belongs_to_a_stage() -> None:
    """A setting no stage lists would never re-run anything when changed: each field is some stage's input."""
    from dataclasses import fields

    from moa.pipeline import _STAGE_SETTINGS, STAGES, CompressSettings

    assert list(_STAGE_SETTINGS) == STAGES
    listed = {name for names in _STAGE_SETTINGS.values() for name in names}
    own = {f.name for f in fields(CompressSettings)} - {"out", "validate_length"}
    assert own <= listed and listed - own == {"val_length"}
