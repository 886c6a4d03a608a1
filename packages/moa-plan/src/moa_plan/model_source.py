"""What a ``--model`` path names: a Hugging Face model directory or a GGUF file.

Every loader (moa-runtime, moa-profiler, the ``moa`` commands) resolves its path here first, so a
bad path fails with the same sentence everywhere, before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from moa_plan.errors import ModelSourceError
from moa_plan.gguf import check_gguf

__all__ = ["ModelSource", "resolve_model_source"]


class ModelSource(NamedTuple):
    """Where transformers finds a model: ``from_pretrained(directory, gguf_file=gguf_file)``.

    Attributes:
        directory: The model directory, or the directory holding the GGUF file.
        gguf_file: The GGUF file's name inside ``directory``; ``None`` for a model directory.
    """

    directory: Path
    gguf_file: str | None

    @property
    def path(self) -> Path:
        """The path the user gave: the directory or the GGUF file."""
        return self.directory / self.gguf_file if self.gguf_file else self.directory


def resolve_model_source(path: str | Path, *, require_weights: bool = False) -> ModelSource:
    """Check a model path cheaply (no weights are read) and say how to load it.

    Args:
        path: A model directory (with ``config.json``) or a ``.gguf`` file.
        require_weights: Also demand ``.safetensors`` weights in a directory (pickled weights are
            never loaded).

    Raises:
        ModelSourceError: if the path is missing, a directory has no config.json (or no
            safetensors), a file is not a ``.gguf`` file, or the GGUF file is not whole.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"{p}: not a model directory (no config.json)")
        if require_weights and not any(p.glob("*.safetensors")):
            raise ModelSourceError(
                f"{p}: the model directory has no .safetensors weights (pickled weights are never loaded)"
            )
        return ModelSource(p, None)
    if not p.exists():
        raise ModelSourceError(
            f"{p}: not a model directory or .gguf file (no such path, so not a directory with config.json)"
        )
    if p.suffix.lower() != ".gguf":
        raise ModelSourceError(f"{p}: not a model directory or .gguf file (a file without the .gguf suffix)")
    check_gguf(p)
    return ModelSource(p.parent, p.name)
