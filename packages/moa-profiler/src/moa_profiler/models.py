"""Loading a local model and tokenizer, and the versions recorded in outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moa_plan import ModelFingerprint
from moa_profiler.errors import ProfilerError

__all__ = ["DTYPES", "fingerprint_of", "load_model", "load_tokenizer", "versions"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _directory(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise ProfilerError(f"{p}: not a model directory (expected a local directory with config.json)")
    return p


def load_model(path: str | Path, *, dtype: str = "float32", device: str | torch.device = "cpu") -> torch.nn.Module:
    """A causal LM from a local directory, in eval mode with SDPA attention.

    Raises:
        ProfilerError: if the directory is missing or transformers cannot load it.
    """
    from transformers import AutoModelForCausalLM

    p = _directory(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=DTYPES[dtype], attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise ProfilerError(f"{p}: transformers cannot load this model ({exc.__class__.__name__})") from None
    return model.to(device).eval()  # type: ignore[arg-type]


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved with a model.

    Raises:
        ProfilerError: if there is none.
    """
    from transformers import AutoTokenizer

    p = _directory(path)
    try:
        return AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError) as exc:
        raise ProfilerError(f"{p}: transformers cannot load a tokenizer from it ({exc.__class__.__name__})") from None


def fingerprint_of(model: torch.nn.Module) -> ModelFingerprint:
    """The moa fingerprint of a loaded model."""
    return ModelFingerprint.from_config(model.config)


def versions() -> dict[str, str]:
    """Versions of the packages that shape a profile."""
    import transformers

    import moa_plan
    from moa_profiler import __version__

    return {
        "moa-profiler": __version__,
        "moa-plan": moa_plan.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
