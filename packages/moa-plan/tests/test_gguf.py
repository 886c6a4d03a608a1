"""The GGUF header reader: files written byte by byte here (and by the gguf package's writer).

The expected values are facts of the GGUF format, computed in this file from the bytes it writes
(header layout, alignment padding, the Q4_1 block of 32 elements in 20 bytes: an fp16 scale, an
fp16 minimum and 16 bytes of 4-bit quants), not read back from the code under test.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moa_plan import (
    MoaError,
    ModelFingerprint,
    ModelSource,
    ModelSourceError,
    Plan,
    check_gguf,
    fingerprint_from_gguf,
    read_gguf_header,
    resolve_model_source,
)
from moa_plan.cli import main

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_Q4_1, GGML_Q8_0 = 0, 3, 8


def gstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def array(etype: int, items: list[bytes]) -> bytes:
    return struct.pack("<IQ", etype, len(items)) + b"".join(items)


# Metadata as written (key, type, payload) and as it must read back.
METADATA: list[tuple[str, int, bytes, object]] = [
    ("general.architecture", STRING, gstr("llama"), "llama"),
    ("general.name", STRING, gstr("tiny ü"), "tiny ü"),
    ("llama.block_count", U32, struct.pack("<I", 3), 3),
    ("llama.context_length", U64, struct.pack("<Q", 4096), 4096),
    ("llama.embedding_length", U32, struct.pack("<I", 96), 96),
    ("llama.attention.head_count", U32, struct.pack("<I", 6), 6),
    ("llama.attention.head_count_kv", U32, struct.pack("<I", 2), 2),
    ("llama.rope.freq_base", F32, struct.pack("<f", 10000.0), 10000.0),
    ("llama.attention.layer_norm_rms_epsilon", F64, struct.pack("<d", 1e-5), 1e-5),
    ("test.u8", U8, struct.pack("<B", 255), 255),
    ("test.i8", I8, struct.pack("<b", -7), -7),
    ("test.u16", U16, struct.pack("<H", 65535), 65535),
    ("test.i16", I16, struct.pack("<h", -300), -300),
    ("test.i32", I32, struct.pack("<i", -70000), -70000),
    ("test.i64", I64, struct.pack("<q", -(1 << 40)), -(1 << 40)),
    ("test.bool", BOOL, struct.pack("<B", 1), True),
    ("tokenizer.ggml.tokens", ARRAY, array(STRING, [gstr("<s>"), gstr("ü"), gstr("")]), ["<s>", "ü", ""]),
    ("tokenizer.ggml.scores", ARRAY, array(F32, [struct.pack("<f", v) for v in (0.5, -1.0)]), [0.5, -1.0]),
    ("test.nested", ARRAY, array(ARRAY, [array(U8, [b"\x01", b"\x02"]), array(U8, [])]), [[1, 2], []]),
]

# The fingerprint the converted HF config of this model would give.
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "hidden_size": 96,
    "max_position_embeddings": 4096,
}


def tensor_info(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def build(
    *,
    alignment: int | None = None,
    version: int = 3,
    magic: bytes = b"GGUF",
    extra_tensor: tuple[str, int, int] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """A GGUF file: an F32 [3, 4] tensor (48 bytes) and a Q4_1 [2, 64] tensor (4 blocks: 80 bytes)."""
    metadata = list(METADATA)
    if alignment is not None:
        metadata.append(("general.alignment", U32, struct.pack("<I", alignment), alignment))
    align = alignment or 32
    q_offset = -(-48 // align) * align
    tensors = [("tok", (4, 3), GGML_F32, 0), ("w", (64, 2), GGML_Q4_1, q_offset)]
    if extra_tensor is not None:
        tensors.append((extra_tensor[0], (32,), extra_tensor[1], extra_tensor[2]))
    head = magic + struct.pack("<IQQ", version, len(tensors), len(metadata))
    head += b"".join(kv(k, t, p) for k, t, p, _ in metadata)
    head += b"".join(tensor_info(*t) for t in tensors)
    data_offset = -(-len(head) // align) * align
    f32 = np.arange(12, dtype="<f4").tobytes()
    q4_1 = bytes(range(80))
    data = f32 + b"\0" * (q_offset - 48) + q4_1
    blob = head + b"\0" * (data_offset - len(head)) + data
    return blob, {"header_end": len(head), "data_offset": data_offset, "q_offset": q_offset, "end": len(blob)}


def write(tmp_path: Path, blob: bytes, name: str = "tiny.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("alignment", [None, 64], ids=["default-alignment", "alignment-64"])
def test_metadata_and_tensor_infos_read_back(tmp_path: Path, alignment: int | None) -> None:
    blob, layout = build(alignment=alignment)
    header = check_gguf(write(tmp_path, blob))
    expected = {k: v for k, _, _, v in METADATA}
    if alignment is not None:
        expected["general.alignment"] = alignment
    assert header.metadata == expected
    assert header.version == 3
    assert header.alignment == (alignment or 32)
    assert header.data_offset == layout["data_offset"]
    assert header.data_offset % (alignment or 32) == 0
    assert header.file_size == len(blob)
    assert [(t.name, t.shape, t.type_name, t.offset) for t in header.tensors] == [
        ("tok", (4, 3), "F32", 0),
        ("w", (64, 2), "Q4_1", layout["q_offset"]),
    ]
    assert [t.nbytes for t in header.tensors] == [48, 80]
    assert header.architecture == "llama"


def test_version_2_reads(tmp_path: Path) -> None:
    header = check_gguf(write(tmp_path, build(version=2)[0]))
    assert header.version == 2
    assert len(header.tensors) == 2


def test_fingerprint_matches_the_converted_hf_config(tmp_path: Path) -> None:
    path = write(tmp_path, build()[0])
    fp = fingerprint_from_gguf(read_gguf_header(path).metadata)
    assert fp == ModelFingerprint(
        architecture="llama",
        num_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
    )
    assert fp.differences(ModelFingerprint.from_config(HF_CONFIG)) == []
    assert ModelFingerprint.from_model_path(path) == fp
    assert ModelFingerprint.from_model_path(str(path)) == fp


def test_fingerprint_fields() -> None:
    base = {"general.architecture": "qwen2", "qwen2.block_count": 4, "qwen2.attention.head_count": 8}
    fp = fingerprint_from_gguf(base)
    assert (fp.architecture, fp.num_layers, fp.num_key_value_heads, fp.head_dim) == ("qwen2", 4, 8, None)
    fp = fingerprint_from_gguf(base | {"qwen2.attention.key_length": 128, "qwen2.embedding_length": 512})
    assert fp.head_dim == 128
    assert fingerprint_from_gguf(base | {"qwen2.attention.head_count_kv": [2, 2, 2, 2]}).num_key_value_heads == 2
    with pytest.raises(ModelSourceError, match="block_count"):
        fingerprint_from_gguf({"general.architecture": "qwen2", "qwen2.attention.head_count": 8}, source="m.gguf")
    with pytest.raises(ModelSourceError, match=re.escape("general.architecture")):
        fingerprint_from_gguf({})
    with pytest.raises(ModelSourceError, match="varies by layer"):
        fingerprint_from_gguf(base | {"qwen2.attention.head_count_kv": [2, 4, 2, 2]})
    with pytest.raises(ModelSourceError, match="multiple"):
        fingerprint_from_gguf(base | {"qwen2.attention.head_count_kv": 3})


def test_plan_commands_take_a_gguf(tmp_path: Path) -> None:
    path = write(tmp_path, build()[0])
    result = CliRunner().invoke(main, ["plan", "dense", "--model", str(path), "-o", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    plan = Plan.load(tmp_path / "d.json")
    assert (plan.model.num_layers, plan.model.num_key_value_heads) == (3, 2)
    result = CliRunner().invoke(
        main, ["plan", "uniform", "--model", str(path), "--fraction", "0.5", "-o", str(tmp_path / "u.json")]
    )
    assert result.exit_code == 0, result.output
    assert Plan.load(tmp_path / "u.json").density(8192) == 0.5


def test_plan_command_refuses_a_damaged_gguf(tmp_path: Path) -> None:
    path = write(tmp_path, b"not a gguf at all", "notgguf.gguf")
    result = CliRunner().invoke(main, ["plan", "dense", "--model", str(path), "-o", str(tmp_path / "d.json")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad magic" in lines[0] and "notgguf.gguf" in lines[0], result.stderr
    assert not (tmp_path / "d.json").exists()


def _error(path: Path) -> str:
    with pytest.raises(ModelSourceError) as info:
        check_gguf(path)
    message = str(info.value)
    assert isinstance(info.value, MoaError)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such GGUF file" in _error(tmp_path / "absent.gguf")


@pytest.mark.parametrize("magic", [b"GGML", b"\0\0\0\0", b"gguf"])
def test_bad_magic(tmp_path: Path, magic: bytes) -> None:
    assert "not a GGUF file (bad magic" in _error(write(tmp_path, build(magic=magic)[0]))


def test_empty_and_tiny_files(tmp_path: Path) -> None:
    assert "bad magic" in _error(write(tmp_path, b""))
    assert "is truncated" in _error(write(tmp_path, b"GGUF\x03\0"))


@pytest.mark.parametrize("version", [1, 4, 0x03000000 + 1])
def test_wrong_version(tmp_path: Path, version: int) -> None:
    assert "version" in _error(write(tmp_path, build(version=version)[0]))


def test_big_endian_file(tmp_path: Path) -> None:
    blob = b"GGUF" + struct.pack(">I", 3) + build()[0][8:]
    assert "big-endian" in _error(write(tmp_path, blob))


def test_truncated_header(tmp_path: Path) -> None:
    blob, layout = build()
    # Cut in the middle of the metadata, and just before the last tensor info ends.
    for cut in (60, layout["header_end"] - 1):
        message = _error(write(tmp_path, blob[:cut]))
        assert "is truncated: " in message
        assert f"the file has {cut}" in message


def test_truncated_data_section(tmp_path: Path) -> None:
    blob, layout = build()
    cut = layout["end"] - 10
    message = _error(write(tmp_path, blob[:cut]))
    end = layout["data_offset"] + layout["q_offset"] + 80
    assert end == layout["end"]
    assert f"is truncated: tensor 'w' needs bytes up to {end}, the file has {cut}" in message
    # Cut before the first tensor's data: the F32 tensor is the first one missing.
    cut = layout["data_offset"] + 20
    message = _error(write(tmp_path, blob[:cut]))
    assert f"tensor 'tok' needs bytes up to {layout['data_offset'] + 48}, the file has {cut}" in message
    # The header alone still reads: only check_gguf looks at the data.
    assert len(read_gguf_header(tmp_path / "tiny.gguf").tensors) == 2


def test_every_prefix_fails_cleanly(tmp_path: Path) -> None:
    blob, layout = build()
    path = tmp_path / "cut.gguf"
    for cut in range(0, layout["end"], 7):
        path.write_bytes(blob[:cut])
        with pytest.raises(ModelSourceError):
            check_gguf(path)


def test_unknown_tensor_type_is_checked_by_offset(tmp_path: Path) -> None:
    blob, _ = build(extra_tensor=("odd", 99, 0))
    header = check_gguf(write(tmp_path, blob))
    assert header.tensors[-1].type_name == "type 99" and header.tensors[-1].nbytes is None
    blob, _ = build(extra_tensor=("odd", 99, 1 << 20))
    assert "tensor 'odd' needs bytes up to" in _error(write(tmp_path, blob))


def test_block_size_mismatch(tmp_path: Path) -> None:
    blob, _ = build(extra_tensor=("bad", GGML_Q8_0, 0))
    # 32 elements are one Q8_0 block: fine.
    check_gguf(write(tmp_path, blob))
    fixed = blob.replace(tensor_info("bad", (32,), GGML_Q8_0, 0), tensor_info("bad", (33,), GGML_Q8_0, 0))
    assert "not a multiple of the Q8_0 block size 32" in _error(write(tmp_path, fixed))


def test_absurd_counts_do_not_allocate(tmp_path: Path) -> None:
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv("a", ARRAY, struct.pack("<IQ", STRING, 1 << 60))
    assert "is truncated" in _error(write(tmp_path, blob))
    blob = b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0)
    assert "is truncated" in _error(write(tmp_path, blob))
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv("a", 77, b"")
    assert "unknown GGUF value type 77" in _error(write(tmp_path, blob))


def test_resolve_model_source(tmp_path: Path) -> None:
    gguf = write(tmp_path, build()[0])
    assert resolve_model_source(gguf) == ModelSource(tmp_path, "tiny.gguf")
    assert resolve_model_source(gguf).path == gguf
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(ModelSourceError, match=re.escape("not a model directory (no config.json)")):
        resolve_model_source(model)
    (model / "config.json").write_text("{}")
    assert resolve_model_source(model) == ModelSource(model, None)
    with pytest.raises(ModelSourceError, match=re.escape("no .safetensors weights")):
        resolve_model_source(model, require_weights=True)
    (model / "model.safetensors").write_bytes(b"")
    assert resolve_model_source(model, require_weights=True).gguf_file is None
    with pytest.raises(ModelSourceError, match=r"not a model directory or \.gguf file.*not a directory"):
        resolve_model_source(tmp_path / "nowhere")
    with pytest.raises(ModelSourceError, match=re.escape("without the .gguf suffix")):
        resolve_model_source(model / "config.json")
    with pytest.raises(ModelSourceError, match="is truncated"):
        resolve_model_source(write(tmp_path, build()[0][:-1], "cut.gguf"))


def test_reference_writer(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "ref.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_bool("test.flag", False)
    writer.add_string("test.text", "x" * 100)
    writer.add_tensor("f32", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.add_tensor("f16", np.ones((5,), dtype=np.float16))
    q = gguf.quants.quantize(np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64), gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("q41", q, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    header = check_gguf(path)
    reader = gguf.GGUFReader(str(path))
    assert header.data_offset == reader.data_offset
    assert [(t.name, t.offset + header.data_offset, t.nbytes) for t in header.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors
    ]
    assert [t.shape for t in header.tensors] == [tuple(int(d) for d in t.shape) for t in reader.tensors]
    assert header.metadata["tokenizer.ggml.tokens"] == ["a", "bb", "ccc"]
    assert header.metadata["test.ints"] == [1, -2, 3]
    assert header.metadata["test.flag"] is False
    assert header.metadata["test.text"] == "x" * 100
    assert header.metadata["general.architecture"] == "llama"
    for key in ("llama.block_count", "llama.context_length", "llama.attention.head_count"):
        assert header.metadata[key] == reader.fields[key].contents()
    fp = fingerprint_from_gguf(header.metadata)
    assert (fp.num_layers, fp.num_attention_heads, fp.num_key_value_heads, fp.head_dim) == (2, 4, 1, 16)
    # The writer pads the last tensor to the alignment; cut one byte into its data.
    end = int(reader.tensors[-1].data_offset) + int(reader.tensors[-1].n_bytes)
    del reader
    path.write_bytes(path.read_bytes()[: end - 1])
    with pytest.raises(ModelSourceError, match=f"tensor 'q41' needs bytes up to {end}, the file has {end - 1}"):
        check_gguf(path)


def test_block_sizes_agree_with_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    from moa_plan.gguf import GGML_TYPES

    for type_id, (name, block, size) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(type_id)
        assert qtype.name == name
        if name == "Q8_1":
            # gguf-py lists 40 bytes (two fp32), but ggml's block_q8_1 is two fp16 + 32 int8:
            # static_assert(sizeof(block_q8_1) == 2*sizeof(ggml_half) + QK8_1) in ggml-common.h.
            assert (block, size) == (32, 36)
            continue
        assert gguf.GGML_QUANT_SIZES[qtype] == (block, size), name
