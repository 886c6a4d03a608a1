"""A small reader of GGUF headers (llama.cpp's model file format), in pure Python.

Enough to tell a whole GGUF file from a damaged one and to fingerprint the model it holds,
before any weights are loaded (dequantizing is transformers' job, through the ``gguf``
package). The layout (all little-endian)::

    magic "GGUF" | version u32 (2 or 3) | tensor count u64 | metadata count u64
    metadata:     key (string) | value type u32 | value
    tensor infos: name (string) | n_dims u32 | dims u64 x n_dims | ggml type u32 | offset u64
    padding to `general.alignment` (default 32) | data section (tensor offsets count from here)

A string is a u64 byte length and UTF-8 bytes; an array is an element type u32, a u64 count
and the elements.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moa_plan.errors import ModelSourceError
from moa_plan.fingerprint import ModelFingerprint

__all__ = [
    "GGML_TYPES",
    "GGUFHeader",
    "GGUFTensorInfo",
    "check_gguf",
    "fingerprint_from_gguf",
    "read_gguf_header",
]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8
MAX_ARRAY_DEPTH = 8

# ggml type id -> (name, elements per block, bytes per block), as in ggml.h / ggml.c type_traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}

# GGUF metadata value type -> struct format of a scalar (8 = string and 9 = array are read apart).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY, _BOOL = 8, 9, 7
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, kw_only=True)
class GGUFTensorInfo:
    """One tensor's entry in the header.

    Attributes:
        name: Tensor name (``blk.0.attn_q.weight``).
        shape: Dimensions in GGUF order (innermost, contiguous dimension first).
        ggml_type: ggml type id (a key of `GGML_TYPES` when known).
        offset: Byte offset of the tensor's data from the start of the data section.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def type_name(self) -> str:
        """``Q4_1``, ..., or ``type N`` for a type this reader does not know."""
        known = GGML_TYPES.get(self.ggml_type)
        return known[0] if known else f"type {self.ggml_type}"

    @property
    def n_elements(self) -> int:
        """Number of elements (product of the shape)."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int | None:
        """Bytes of data, from the type's block layout; ``None`` for an unknown type."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return None
        _, block, size = known
        return -(-self.n_elements // block) * size


@dataclass(frozen=True, kw_only=True)
class GGUFHeader:
    """Everything before the tensor data.

    Attributes:
        path: The file.
        version: GGUF version (2 or 3).
        metadata: Key -> value (int, float, bool, str or a list of them).
        tensors: Tensor infos in file order.
        alignment: ``general.alignment`` (default 32).
        data_offset: Absolute byte offset of the data section.
        file_size: Size of the file in bytes.
    """

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (``llama``, ``qwen2``, ...), if recorded."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


def _short(name: str) -> str:
    """A name as messages quote it: at most 80 characters (a damaged header can hold any bytes)."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


class _TruncatedError(Exception):
    def __init__(self, needed: int, what: str) -> None:
        self.needed, self.what = needed, what


class _BadHeaderError(Exception):
    """The header is readable but not valid; the message completes "<file>: ..."."""


class _Cursor:
    """Reads little-endian values from a buffer, raising `_TruncatedError` past its end."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.what = "the header"

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _TruncatedError(start + n, self.what)
        self.pos = start + n
        return start

    def scalar(self, fmt: str) -> Any:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(depth)
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise _BadHeaderError(f"{self.what} has an unknown GGUF value type {vtype}")
        value = self.scalar(fmt)
        return bool(value) if vtype == _BOOL else value

    def array(self, depth: int) -> list[Any]:
        if depth >= MAX_ARRAY_DEPTH:
            raise _BadHeaderError(f"{self.what} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
        etype, count = self.scalar("<I"), self.scalar("<Q")
        fmt = _SCALARS.get(etype)
        if fmt is not None:
            width = struct.calcsize(fmt)
            start = self.take(count * width)
            values = [v[0] for v in struct.iter_unpack(fmt, self.buf[start : start + count * width])]
            return [bool(v) for v in values] if etype == _BOOL else values
        if etype not in (_STRING, _ARRAY):
            raise _BadHeaderError(f"{self.what} has an unknown GGUF array element type {etype}")
        # Every string or array element takes at least 8 bytes: refuse absurd counts before looping.
        if count * 8 > self.size - self.pos:
            raise _TruncatedError(self.pos + count * 8, self.what)
        if etype == _STRING:
            return self.strings(count)
        return [self.array(depth + 1) for _ in range(count)]

    def strings(self, count: int) -> list[str]:
        """``count`` strings in a row (a vocabulary has tens of thousands: one tight loop)."""
        buf, pos, size, length = self.buf, self.pos, self.size, _U64.unpack_from
        out = []
        for _ in range(count):
            if pos + 8 > size:
                raise _TruncatedError(pos + 8, self.what)
            n = length(buf, pos)[0]
            pos += 8
            if pos + n > size:
                raise _TruncatedError(pos + n, self.what)
            out.append(buf[pos : pos + n].decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return out


def _parse(buf: Any, size: int, path: Path) -> GGUFHeader:
    cur = _Cursor(buf, size)
    if size < 4 or bytes(buf[:4]) != MAGIC:
        got = bytes(buf[:4]) if size else b""
        raise _BadHeaderError(f"not a GGUF file (bad magic {got!r}, expected b'GGUF')")
    cur.take(4)
    version = cur.scalar("<I")
    if version not in VERSIONS:
        if struct.unpack("<I", struct.pack(">I", version))[0] in VERSIONS:
            raise _BadHeaderError("a big-endian GGUF file, which moa does not read")
        raise _BadHeaderError(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        cur.what = f"metadata entry {i}"
        key = cur.string()
        cur.what = f"metadata value {_short(key)}"
        metadata[key] = cur.value(cur.scalar("<I"))
    tensors = []
    # Each tensor info takes at least 24 bytes: refuse absurd counts before looping.
    if n_tensors * 24 > size - cur.pos:
        raise _TruncatedError(cur.pos + n_tensors * 24, "the tensor infos")
    for i in range(n_tensors):
        cur.what = f"tensor info {i}"
        name = cur.string()
        cur.what = f"tensor info {_short(name)}"
        n_dims = cur.scalar("<I")
        if n_dims > MAX_DIMS:
            raise _BadHeaderError(f"tensor {_short(name)} has {n_dims} dimensions (at most {MAX_DIMS} are possible)")
        shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
        tensors.append(GGUFTensorInfo(name=name, shape=shape, ggml_type=cur.scalar("<I"), offset=cur.scalar("<Q")))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise _BadHeaderError(f"invalid general.alignment {alignment!r} (expected a positive integer)")
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
        file_size=size,
    )


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """The metadata and tensor infos of a GGUF file (the tensor data is not read).

    Raises:
        ModelSourceError: if the file is missing or unreadable, is not a GGUF file (bad magic),
            has an unsupported version, or ends inside the header.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelSourceError(f"{p}: no such GGUF file")
    size = 0
    try:
        with p.open("rb") as f:
            size = p.stat().st_size
            if size == 0:
                return _parse(b"", 0, p)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, size, p)
    except _TruncatedError as exc:
        raise ModelSourceError(
            f"{p} is truncated: {exc.what} needs bytes up to {exc.needed}, the file has {size}"
        ) from None
    except _BadHeaderError as exc:
        raise ModelSourceError(f"{p}: {exc}") from None
    except (OSError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelSourceError(f"{p}: cannot read the GGUF file ({exc.__class__.__name__}: {exc})") from None


def check_gguf(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file whose data section holds every tensor it lists.

    A tensor of a known ggml type must end inside the file; one of an unknown type must at least
    start inside it.

    Raises:
        ModelSourceError: as `read_gguf_header`, or if the file is truncated inside the data.
    """
    header = read_gguf_header(path)
    size = header.file_size
    for t in header.tensors:
        start = header.data_offset + t.offset
        known = GGML_TYPES.get(t.ggml_type)
        if known is not None and t.n_elements % known[1]:
            raise ModelSourceError(
                f"{header.path}: tensor {_short(t.name)} has {t.n_elements} elements, not a multiple of the "
                f"{t.type_name} block size {known[1]}"
            )
        nbytes = t.nbytes
        end = start + (nbytes if nbytes is not None else 1)
        if end > size:
            raise ModelSourceError(
                f"{header.path} is truncated: tensor {_short(t.name)} needs bytes up to {end}, the file has {size}"
            )
    return header


def _int(metadata: Mapping[str, Any], key: str, source: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    # Some files give per-layer head counts; a plan needs one count for all layers.
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise ModelSourceError(
                f"{source}: GGUF metadata {key} varies by layer ({value[:8]}), which moa cannot plan"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelSourceError(f"{source}: GGUF metadata {key} is {repr(value)[:80]}, expected an integer")
    return value


def fingerprint_from_gguf(metadata: Mapping[str, Any], *, source: str | Path = "GGUF file") -> ModelFingerprint:
    """The fingerprint of the model a GGUF file holds, equal to the one of its converted HF config.

    Args:
        metadata: The header's metadata (`GGUFHeader.metadata`).
        source: What to name in error messages (the file).

    Raises:
        ModelSourceError: if the metadata lacks the architecture, layer or head counts, or they
            do not fit together.
    """
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelSourceError(f"{source}: GGUF metadata has no general.architecture")
    layers = _int(metadata, f"{arch}.block_count", str(source))
    heads = _int(metadata, f"{arch}.attention.head_count", str(source))
    if layers is None or heads is None:
        missing = f"{arch}.block_count" if layers is None else f"{arch}.attention.head_count"
        raise ModelSourceError(f"{source}: GGUF metadata has no {missing}, so the model has no layer/head counts")
    kv_heads = _int(metadata, f"{arch}.attention.head_count_kv", str(source)) or heads
    head_dim = _int(metadata, f"{arch}.attention.key_length", str(source))
    hidden = _int(metadata, f"{arch}.embedding_length", str(source))
    if head_dim is None and hidden is not None and heads:
        head_dim = hidden // heads
    try:
        return ModelFingerprint(
            architecture=arch,
            num_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=_int(metadata, f"{arch}.context_length", str(source)),
        )
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ModelSourceError(f"{source}: GGUF model metadata is not usable ({reason})") from None
