"""Loading a local model and tokenizer (a model directory or a GGUF file), and the versions recorded in outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from moa_plan import (
    ModelFingerprint,
    ModelSource,
    PlanError,
    fingerprint_from_gguf,
    read_gguf_header,
    resolve_model_source,
)
from moa_profiler.errors import ProfilerError

__all__ = ["DTYPES", "fingerprint_of", "input_device", "load_model", "load_tokenizer", "versions"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _source(path: str | Path) -> ModelSource:
    return resolve_model_source(path, require_weights=True)


def _gguf_packages(source: ModelSource) -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ProfilerError(
            f"{source.path}: loading a GGUF file needs the {' and '.join(missing)} package(s): "
            f"pip install {' '.join(missing)}"
        )


def _check_config(source: ModelSource) -> None:
    """Fail before any weights load if the config (or GGUF metadata) lacks the layer or head counts."""
    if source.gguf_file is not None:
        fingerprint_from_gguf(read_gguf_header(source.path).metadata, source=source.path)
        return
    from transformers import AutoConfig

    cfg = source.directory / "config.json"
    try:
        ModelFingerprint.from_config(AutoConfig.from_pretrained(source.directory, local_files_only=True))
    except (OSError, ValueError, KeyError) as exc:
        raise ProfilerError(
            f"{cfg}: transformers cannot read this config ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    except PlanError as exc:
        raise ProfilerError(f"{cfg}: {exc}") from None


def _cannot_load(source: ModelSource, exc: Exception, what: str = "this model") -> ProfilerError:
    detail = f"{exc.__class__.__name__}: {str(exc)[:200]}"
    if source.gguf_file is not None and (what == "this model" or "architecture" in str(exc)):
        arch = read_gguf_header(source.path).architecture or "unknown"
        return ProfilerError(f"{source.path}: transformers cannot load GGUF architecture '{arch}' ({detail})")
    return ProfilerError(f"{source.path}: transformers cannot load {what} ({detail})")


def load_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A causal LM from a model directory (safetensors only) or a ``.gguf`` file, in eval mode with SDPA.

    A GGUF file is dequantized by transformers into a plain floating-point model (it needs the
    ``gguf`` and ``accelerate`` packages).

    Args:
        path: Model directory (``config.json`` and ``*.safetensors``) or a GGUF file.
        dtype: Weight dtype (a key of `DTYPES`).
        device: Where the whole model goes (ignored when ``device_map`` is given).
        device_map: Split the layers over several devices (``"auto"``, ``"balanced"``,
            ``"sequential"`` or an explicit ``{module name: device}`` mapping), through
            transformers/accelerate; needs ``pip install 'moa-profiler[multi-gpu]'``.

    Raises:
        MoaError: if the path is not a model directory with safetensors or a whole GGUF file, its
            config lacks the layer counts, transformers cannot load it, or a device map is asked
            for without accelerate installed.
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    source = _source(path)
    _check_config(source)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "attn_implementation": "sdpa", "local_files_only": True}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise ProfilerError("a device map needs accelerate: pip install 'moa-profiler[multi-gpu]'")
        kwargs["device_map"] = device_map
    if source.gguf_file is not None:
        _gguf_packages(source)
        # Dequantize every weight: influence is taken through plain floating-point layers.
        kwargs |= {"gguf_file": source.gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    else:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise _cannot_load(source, exc) from None
    if source.gguf_file is not None:
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        if not getattr(model.config, "architectures", None):
            model.config.architectures = [type(model).__name__]
    if device_map is None:
        model = model.to(device)  # type: ignore[arg-type]
    return model.eval()  # type: ignore[no-any-return]


def input_device(model: torch.nn.Module) -> torch.device:
    """The device token ids must be on: the input embeddings' (the first device of a split model)."""
    return model.get_input_embeddings().weight.device  # type: ignore[operator,union-attr,no-any-return]


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved with a model directory, or the one a GGUF file describes.

    Raises:
        MoaError: if the path is not a model, or transformers cannot build its tokenizer.
    """
    from transformers import AutoTokenizer

    source = _source(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file is not None:
        _gguf_packages(source)
        kwargs["gguf_file"] = source.gguf_file
    try:
        return AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise _cannot_load(source, exc, "a tokenizer from it") from None


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
