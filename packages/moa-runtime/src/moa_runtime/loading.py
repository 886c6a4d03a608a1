"""Load a causal LM and its tokenizer from a Hugging Face model directory or a GGUF file.

Every moa-runtime entry point (``moa generate``, the benchmark) and the ``moa`` umbrella load
through here. The path is checked cheaply first (`moa_plan.resolve_model_source`: config.json and
safetensors for a directory, a whole header and data section for a GGUF file), then the
config, and only then the weights. A GGUF file is dequantized by transformers into a plain
floating-point model (it needs the ``gguf`` and ``accelerate`` packages).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from moa_plan import (
    ModelFingerprint,
    ModelSource,
    PlanError,
    fingerprint_from_gguf,
    read_gguf_header,
    resolve_model_source,
)
from moa_runtime.errors import MoaRuntimeError

__all__ = ["DTYPES", "load_model", "load_model_and_tokenizer", "load_tokenizer", "model_fingerprint"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _source(path: str | Path) -> ModelSource:
    return resolve_model_source(path, require_weights=True)


def _check_gguf_packages(source: ModelSource) -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MoaRuntimeError(
            f"{source.path}: loading a GGUF file needs the {' and '.join(missing)} package(s): "
            f"pip install {' '.join(missing)}"
        )


def _gguf_architecture(source: ModelSource) -> str:
    return str(read_gguf_header(source.path).architecture or "unknown")


def model_fingerprint(path: str | Path, *, trust_remote_code: bool = False) -> ModelFingerprint:
    """The fingerprint of the model at ``path``, from its config or GGUF header (no weights are read).

    Raises:
        MoaError: if the path is not a model directory with safetensors or a whole GGUF file, or
            its config lacks the layer or head counts.
    """
    return _fingerprint(_source(path), trust_remote_code)


def _fingerprint(source: ModelSource, trust_remote_code: bool) -> ModelFingerprint:
    if source.gguf_file is not None:
        return fingerprint_from_gguf(read_gguf_header(source.path).metadata, source=source.path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            source.directory, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise MoaRuntimeError(
            f"{source.directory / 'config.json'}: transformers cannot read this config ({exc.__class__.__name__}: "
            f"{str(exc)[:200]})"
        ) from None
    try:
        return ModelFingerprint.from_config(config)
    except PlanError as exc:
        raise MoaRuntimeError(f"{source.directory / 'config.json'}: {exc}") from None


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise MoaRuntimeError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    return None if dtype == "auto" else getattr(torch, dtype)


def _plain(model: Any) -> Any:
    """A dequantized GGUF model, made to look like one loaded from safetensors."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if not getattr(config, "architectures", None):
        config.architectures = [type(model).__name__]
    return model


def load_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: Any = "cpu",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
) -> Any:
    """A causal LM in eval mode, from a model directory (safetensors only) or a ``.gguf`` file.

    Args:
        path: Model directory (``config.json`` and ``*.safetensors``) or a GGUF file.
        dtype: ``float32``, ``bfloat16``, ``float16``, or ``auto`` (the checkpoint's own).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``auto`` (CUDA when available) or a torch.device.
        attn_implementation: Attention transformers builds the model with (``None``: its default).
        trust_remote_code: Allow model code from the directory (never for a GGUF file).

    Raises:
        MoaError: if the path is missing, not a model directory with safetensors or a whole GGUF
            file, its config lacks the layer counts, or transformers cannot load it (for a GGUF
            file: an architecture transformers cannot dequantize).
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    source = _source(path)
    _fingerprint(source, trust_remote_code)
    kwargs: dict[str, Any] = {"local_files_only": True}
    torch_dtype = _torch_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if source.gguf_file is not None:
        _check_gguf_packages(source)
        # Dequantize every weight: moa runs plain floating-point layers, never packed GGUF blocks.
        kwargs |= {"gguf_file": source.gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    else:
        kwargs |= {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        if source.gguf_file is not None and isinstance(exc, ValueError | NotImplementedError | KeyError):
            raise MoaRuntimeError(
                f"{source.path}: transformers cannot load GGUF architecture '{_gguf_architecture(source)}' "
                f"({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from None
        raise MoaRuntimeError(
            f"{source.path}: transformers cannot load this model ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    if source.gguf_file is not None:
        model = _plain(model)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with a model directory, or the one a GGUF file describes.

    Raises:
        MoaError: if the path is not a model, or transformers cannot build its tokenizer.
    """
    from transformers import AutoTokenizer

    source = _source(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file is not None:
        _check_gguf_packages(source)
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["trust_remote_code"] = trust_remote_code
    try:
        return AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        if source.gguf_file is not None and "architecture" in str(exc):
            raise MoaRuntimeError(
                f"{source.path}: transformers cannot load GGUF architecture '{_gguf_architecture(source)}' "
                f"({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from None
        raise MoaRuntimeError(
            f"{source.path}: transformers cannot load a tokenizer from it ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None


def load_model_and_tokenizer(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: Any = "cpu",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """`load_tokenizer` then `load_model` (the tokenizer first: it is the cheaper one to fail)."""
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_model(
        path, dtype=dtype, device=device, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
    return model, tokenizer
