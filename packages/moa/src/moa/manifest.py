"""The pipeline manifest: which stages finished, for which inputs, with which outputs.

A stage is skipped when the manifest records the same input hash (parameters + the content of
every input file) and every recorded output still exists with the same content hash. The
manifest is rewritten atomically after each stage, so a run killed at any point resumes at the
first unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_plan import MoaError, atomic_write_text

__all__ = ["Manifest", "file_digest", "inputs_digest"]

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(child.relative_to(path)).encode())
            h.update(file_digest(child).encode())
        return h.hexdigest()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def inputs_digest(params: Mapping[str, Any], files: Iterable[Path] = ()) -> str:
    """Digest of a stage's parameters (as canonical JSON) and input files' contents."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in files:
        h.update(file_digest(Path(path)).encode())
    return h.hexdigest()


@dataclass
class Manifest:
    """Stage records of one output directory (``DIR/manifest.json``)."""

    root: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / "manifest.json"

    @classmethod
    def load(cls, root: Path) -> Manifest:
        """Read ``root/manifest.json`` (an empty manifest if absent)."""
        manifest = cls(root=root)
        if manifest.path.exists():
            try:
                data = json.loads(manifest.path.read_text(encoding="utf-8"))
                manifest.stages = dict(data["stages"])
            except (OSError, ValueError, KeyError, TypeError):
                raise MoaError(
                    f"{manifest.path}: manifest is unreadable; delete it to start the pipeline over"
                ) from None
        return manifest

    def is_done(self, stage: str, digest: str) -> bool:
        """True if ``stage`` finished with these inputs and its outputs are intact."""
        record = self.stages.get(stage)
        if record is None or record.get("inputs") != digest:
            return False
        for rel, expected in record.get("outputs", {}).items():
            path = self.root / rel
            if not path.exists() or file_digest(path) != expected:
                return False
        return True

    def outputs(self, stage: str) -> list[Path]:
        """Recorded output paths of a finished stage."""
        return [self.root / rel for rel in self.stages.get(stage, {}).get("outputs", {})]

    def record(
        self, stage: str, digest: str, outputs: Iterable[Path], summary: Mapping[str, Any] | None = None
    ) -> None:
        """Mark ``stage`` finished and write the manifest atomically."""
        self.stages[stage] = {
            "inputs": digest,
            "outputs": {str(Path(p).relative_to(self.root)): file_digest(Path(p)) for p in outputs},
            "summary": dict(summary or {}),
        }
        atomic_write_text(self.path, json.dumps({"stages": self.stages}, indent=2, sort_keys=True, default=str) + "\n")

    def forget_after(self, stage: str, order: list[str]) -> None:
        """Drop records of the stages after ``stage`` (their inputs changed)."""
        for later in order[order.index(stage) + 1 :]:
            self.stages.pop(later, None)
