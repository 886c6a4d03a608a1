"""Model fingerprint: the few config fields a plan or profile is bound to.

Built from a transformers config object or a plain dict (e.g. a parsed ``config.json``)
without importing transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moa_plan.errors import PlanError

__all__ = ["ModelFingerprint"]


def _get(config: Any, name: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def _family(architecture: str) -> str:
    """``LlamaForCausalLM`` and ``llama`` -> ``llama``: the model family an architecture names."""
    return re.sub(r"for[a-z]+$", "", architecture.lower().replace("_", "").replace("-", ""))


class ModelFingerprint(BaseModel):
    """What a plan assumes about its model. ``None`` means "not recorded" and is not compared.

    Attributes:
        architecture: ``config.architectures[0]`` (e.g. ``LlamaForCausalLM``), or the model type.
        num_layers: Decoder layers.
        num_attention_heads: Query heads per layer.
        num_key_value_heads: KV heads per layer (equal to query heads for MHA).
        head_dim: Per-head dimension.
        max_position_embeddings: Longest position the model was configured for.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str | None = None
    num_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _groups(self) -> ModelFingerprint:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        return self

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_config(cls, config: Any) -> ModelFingerprint:
        """Fingerprint of a transformers config object or a ``config.json`` dict.

        Raises:
            PlanError: if the config lacks the layer or head counts.
        """
        text_config = _get(config, "text_config")
        if text_config is not None and _get(config, "num_hidden_layers") is None:
            config = text_config
        layers = _get(config, "num_hidden_layers")
        heads = _get(config, "num_attention_heads")
        if layers is None or heads is None:
            raise PlanError(
                "model config has no num_hidden_layers / num_attention_heads; is it a decoder-only transformers config?"
            )
        kv_heads = _get(config, "num_key_value_heads") or heads
        head_dim = _get(config, "head_dim")
        hidden = _get(config, "hidden_size")
        if head_dim is None and hidden is not None:
            head_dim = int(hidden) // int(heads)
        archs = _get(config, "architectures")
        arch = archs[0] if archs else _get(config, "model_type")
        try:
            return cls(
                architecture=arch,
                num_layers=int(layers),
                num_attention_heads=int(heads),
                num_key_value_heads=int(kv_heads),
                head_dim=int(head_dim) if head_dim is not None else None,
                max_position_embeddings=_get(config, "max_position_embeddings"),
            )
        except (ValueError, TypeError) as exc:
            raise PlanError(f"model config is not usable: {exc}") from None

    @classmethod
    def from_model_path(cls, path: str | Path) -> ModelFingerprint:
        """Fingerprint from a model directory (its ``config.json``), a config JSON file or a ``.gguf`` file.

        A GGUF file is checked whole (`moa_plan.gguf.check_gguf`) and fingerprinted from its
        header metadata, without reading the weights.

        Raises:
            PlanError: if the path or its config.json is missing, unreadable or lacks the layer counts.
            ModelSourceError: if a ``.gguf`` file is not a whole GGUF file or lacks the layer counts.
        """
        p = Path(path)
        if p.suffix.lower() == ".gguf" and p.is_file():
            from moa_plan.gguf import check_gguf, fingerprint_from_gguf

            return fingerprint_from_gguf(check_gguf(p).metadata, source=p)
        cfg = p / "config.json" if p.is_dir() else p
        if not cfg.is_file():
            raise PlanError(
                f"{path}: no model config found (expected a directory with config.json, a JSON file or a .gguf file)"
            )
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{cfg}: cannot read model config ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(data, dict):
            raise PlanError(f"{cfg}: model config must be a JSON object")
        try:
            return cls.from_config(data)
        except PlanError as exc:
            raise PlanError(f"{cfg}: {exc}") from None

    def differences(self, other: ModelFingerprint) -> list[str]:
        """Fields recorded in both fingerprints that differ, as ``"field: self != other"``."""
        out = []
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None or mine == theirs:
                continue
            # A saved config names the class (LlamaForCausalLM), a fresh one only the model type (llama).
            if name == "architecture" and _family(mine) == _family(theirs):
                continue
            out.append(f"{name}: plan has {mine}, model has {theirs}")
        return out
