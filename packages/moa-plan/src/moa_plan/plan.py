"""The plan: one elastic rule per (layer, KV head), bound to a model fingerprint.

A plan is a frozen pydantic model persisted as JSON. ``format_version`` is checked before
anything else so a plan from a newer moa gets a clear "upgrade" message; older versions keep
loading forever (golden files under ``tests/golden/``).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moa_plan import rules as _rules
from moa_plan._files import read_json_object
from moa_plan._version import __version__
from moa_plan.errors import PlanError
from moa_plan.fingerprint import ModelFingerprint
from moa_plan.io import atomic_write_text
from moa_plan.rules import DEFAULT_BLOCK, DEFAULT_SINK, ElasticRule

__all__ = ["FORMAT_VERSION", "Plan", "Provenance", "load_plan", "save_plan"]

FORMAT_VERSION = 1

Scalar = str | int | float | bool | None


class Provenance(BaseModel):
    """Where a plan came from: who made it, for which budget, lengths and objective values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    creator: str = "moa-plan"
    creator_version: str = __version__
    created_at: str | None = None
    method: str | None = Field(default=None, description="e.g. 'moa', 'uniform', 'dense', 'imported'")
    budgets: dict[str, float] = Field(default_factory=dict)
    profiled_lengths: list[int] = Field(default_factory=list)
    constrained_lengths: list[int] = Field(default_factory=list)
    objectives: dict[str, float] = Field(default_factory=dict)
    notes: str | None = None
    extra: dict[str, Scalar] = Field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Plan(BaseModel):
    """One elastic rule per (layer, KV head) of one model.

    Attributes:
        format_version: Plan file format version (this code writes `FORMAT_VERSION`).
        model: Fingerprint of the model the plan was made for.
        sink: Sink tokens S, always kept.
        block: Block size B that spans are rounded up to.
        rules: ``rules[layer][kv_head]``.
        provenance: Creator, budgets, lengths, objective values, notes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    model: ModelFingerprint
    sink: int = Field(default=DEFAULT_SINK, ge=0, le=1 << 30)
    block: int = Field(default=DEFAULT_BLOCK, ge=1, le=1 << 30)
    rules: tuple[tuple[ElasticRule, ...], ...]
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"format_version must be >= 1, got {value}")
        if value > FORMAT_VERSION:
            raise ValueError(
                f"format_version {value} is newer than this moa-plan reads ({FORMAT_VERSION}); upgrade moa-plan"
            )
        return value

    @model_validator(mode="after")
    def _shape(self) -> Plan:
        layers, heads = self.model.num_layers, self.model.num_key_value_heads
        if len(self.rules) != layers:
            raise ValueError(f"rules has {len(self.rules)} layers but the model fingerprint has {layers}")
        for index, row in enumerate(self.rules):
            if len(row) != heads:
                raise ValueError(f"rules[{index}] has {len(row)} heads but the model has {heads} KV heads")
        return self

    # construction -------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        model: ModelFingerprint,
        alphas: npt.ArrayLike,
        betas: npt.ArrayLike,
        *,
        sink: int = DEFAULT_SINK,
        block: int = DEFAULT_BLOCK,
        provenance: Provenance | None = None,
    ) -> Plan:
        """Plan from ``[layers, kv_heads]`` arrays of alphas and betas.

        Raises:
            PlanError: if shapes or values are invalid.
        """
        a = np.asarray(alphas, dtype=np.float64)
        b = np.asarray(betas, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 2:
            raise PlanError(f"alphas and betas must be 2-D arrays of one shape, got {a.shape} and {b.shape}")
        try:
            return cls(
                model=model,
                sink=sink,
                block=block,
                rules=tuple(
                    tuple(ElasticRule(alpha=float(x), beta=float(y)) for x, y in zip(ra, rb, strict=True))
                    for ra, rb in zip(a, b, strict=True)
                ),
                provenance=provenance or Provenance(created_at=_now()),
            )
        except ValidationError as exc:
            raise PlanError(f"invalid plan: {_first_error(exc)}") from None

    @classmethod
    def uniform(
        cls,
        model: ModelFingerprint,
        fraction: float,
        *,
        sink: int = DEFAULT_SINK,
        block: int = DEFAULT_BLOCK,
        notes: str | None = None,
    ) -> Plan:
        """StreamingLLM-style baseline: every head gets rule ``(0, fraction)``.

        Its KV density at N is within B/N of ``fraction`` wherever ``fraction * N >= S + B``.
        """
        if not 0.0 < fraction <= 1.0:
            raise PlanError(f"uniform fraction must be in (0, 1], got {fraction}")
        shape = (model.num_layers, model.num_key_value_heads)
        prov = Provenance(created_at=_now(), method="uniform", budgets={"fraction": fraction}, notes=notes)
        return cls.from_arrays(
            model, np.zeros(shape), np.full(shape, fraction), sink=sink, block=block, provenance=prov
        )

    @classmethod
    def window(
        cls,
        model: ModelFingerprint,
        tokens: int,
        *,
        sink: int = DEFAULT_SINK,
        block: int = DEFAULT_BLOCK,
        notes: str | None = None,
    ) -> Plan:
        """StreamingLLM as it is usually run: every head keeps a fixed ``tokens`` (sink included), at every length.

        Rule ``(tokens, 0)``: the span is ``tokens`` rounded up to the block (at least the sink and one
        block) and never more than N, so its density falls as 1/N, unlike `uniform`'s fixed fraction.
        """
        if tokens < 1:
            raise PlanError(f"window must be at least 1 token, got {tokens}")
        shape = (model.num_layers, model.num_key_value_heads)
        prov = Provenance(created_at=_now(), method="uniform", budgets={"window": float(tokens)}, notes=notes)
        return cls.from_arrays(
            model, np.full(shape, float(tokens)), np.zeros(shape), sink=sink, block=block, provenance=prov
        )

    @classmethod
    def dense(cls, model: ModelFingerprint, *, sink: int = DEFAULT_SINK, block: int = DEFAULT_BLOCK) -> Plan:
        """Every head keeps every token: rule ``(0, 1)``, density 1 at every length."""
        shape = (model.num_layers, model.num_key_value_heads)
        prov = Provenance(created_at=_now(), method="dense")
        return cls.from_arrays(model, np.zeros(shape), np.ones(shape), sink=sink, block=block, provenance=prov)

    # rule math ----------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def num_kv_heads(self) -> int:
        return self.model.num_key_value_heads

    @property
    def alphas(self) -> npt.NDArray[np.float64]:
        """``[layers, kv_heads]`` float64 array of alphas."""
        return np.array([[r.alpha for r in row] for row in self.rules], dtype=np.float64)

    @property
    def betas(self) -> npt.NDArray[np.float64]:
        """``[layers, kv_heads]`` float64 array of betas."""
        return np.array([[r.beta for r in row] for row in self.rules], dtype=np.float64)

    def spans(self, n: int) -> npt.NDArray[np.int64]:
        """``[layers, kv_heads]`` spans in tokens (sink included) at total length ``n``."""
        return _rules.span(self.alphas, self.betas, n, sink=self.sink, block=self.block)

    def windows(self, n: int) -> npt.NDArray[np.int64]:
        """``[layers, kv_heads]`` windows (span minus sink) at total length ``n``."""
        return _rules.window(self.alphas, self.betas, n, sink=self.sink, block=self.block)

    def density(self, n: int) -> float:
        """Mean KV density over all (layer, KV head) at total length ``n``."""
        return float(np.mean(self.spans(n)) / n)

    def attention_density(self, n: int) -> float:
        """Mean attention-area density (mask area over the causal triangle) at length ``n``."""
        return float(np.mean(_rules.attention_density(self.alphas, self.betas, n, sink=self.sink, block=self.block)))

    def rules_per_layer(self) -> list[int]:
        """Number of distinct rules in each layer."""
        return [len(set(row)) for row in self.rules]

    def kv_bytes(self, n: int, *, batch: int = 1, head_dim: int | None = None, dtype_bytes: int = 2) -> int:
        """Bytes of K and V the plan keeps at length ``n`` (sum of spans x 2 x head_dim x dtype x batch)."""
        dim = head_dim or self.model.head_dim
        if dim is None:
            raise PlanError("head_dim is not recorded in the plan; pass head_dim")
        return int(self.spans(n).sum()) * 2 * dim * dtype_bytes * batch

    # compatibility ------------------------------------------------------------------------

    def check_compatible(self, config: Any) -> None:
        """Raise `PlanError` naming the differing field if the plan does not fit ``config``.

        Args:
            config: A transformers config object, a ``config.json`` dict or a `ModelFingerprint`.
        """
        other = config if isinstance(config, ModelFingerprint) else ModelFingerprint.from_config(config)
        diffs = self.model.differences(other)
        if diffs:
            raise PlanError(f"plan does not fit the model: {'; '.join(diffs)}")

    # persistence --------------------------------------------------------------------------

    def to_json(self) -> str:
        """JSON text of the plan (stable key order, two-space indent)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and validate a plan JSON file.

        Raises:
            PlanError: one sentence naming the file, the field and what was expected.
        """
        data = read_json_object(path, "plan", PlanError)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "plan") -> Plan:
        """Validate a parsed plan object; see `load`."""
        version = data.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise PlanError(
                f"{source}: format_version {version} is newer than this moa-plan reads "
                f"({FORMAT_VERSION}); upgrade moa-plan"
            )
        if "alphas" in data and "rules" not in data:
            raise PlanError(
                f"{source}: this looks like an original MoA plan (alphas/betas); "
                "import it with `moa plan convert --from moa-json`"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PlanError(f"{source}: invalid plan: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"field {loc}: {msg}{extra}"


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan JSON file; see `Plan.load`."""
    return Plan.load(path)


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` to ``path`` atomically; see `Plan.save`."""
    return plan.save(path)


def plans_equal_rules(a: Plan, b: Plan) -> bool:
    """True if two plans keep the same rules, sink and block (provenance ignored)."""
    return (a.rules, a.sink, a.block) == (b.rules, b.sink, b.block)
