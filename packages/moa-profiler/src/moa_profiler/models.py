"""Loading a local model and tokenizer, and the versions recorded in outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from moa_plan import ModelFingerprint
from moa_profiler.errors import ProfilerError

__all__ = ["DTYPES", "fingerprint_of", "input_device", "load_model", "load_tokenizer", "versions"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _directory(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise ProfilerError(f"{p}: not a model directory (expected a local directory with config.json)")
    return p


def load_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A causal LM from a local directory, in eval mode with SDPA attention.

    Args:
        path: Model directory.
        dtype: Weight dtype (a key of `DTYPES`).
        device: Where the whole model goes (ignored when ``device_map`` is given).
        device_map: Split the layers over several devices (``"auto"``, ``"balanced"``,
            ``"sequential"`` or an explicit ``{module name: device}`` mapping), through
            transformers/accelerate; needs ``pip install 'moa-profiler[multi-gpu]'``.

    Raises:
        ProfilerError: if the directory is missing, transformers cannot load it, or a device map
            is asked for without accelerate installed.
    """
    from transformers import AutoModelForCausalLM

    p = _directory(path)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "attn_implementation": "sdpa"}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise ProfilerError("a device map needs accelerate: pip install 'moa-profiler[multi-gpu]'")
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(p, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        why = f": {exc}" if device_map is not None else ""
        raise ProfilerError(f"{p}: transformers cannot load this model ({exc.__class__.__name__}{why})") from None
    if device_map is None:
        model = model.to(device)  # type: ignore[arg-type]
    return model.eval()  # type: ignore[no-any-return]


def input_device(model: torch.nn.Module) -> torch.device:
    """The device token ids must be on: the input embeddings' (the first device of a split model)."""
    return model.get_input_embeddings().weight.device  # type: ignore[operator,union-attr,no-any-return]


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
