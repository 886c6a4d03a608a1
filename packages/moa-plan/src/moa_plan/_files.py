"""Reading user files with one clear error for each way they can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moa_plan.errors import MoaError

__all__ = ["read_json_object", "require_file"]


def require_file(path: str | Path, what: str, error: type[MoaError] = MoaError) -> Path:
    """Return ``path`` as a Path if it is a readable regular file, else raise ``error``."""
    p = Path(path)
    if not p.exists():
        raise error(f"{p}: {what} file not found")
    if p.is_dir():
        raise error(f"{p}: expected a {what} file, got a directory")
    if not p.is_file():
        raise error(f"{p}: {what} path is not a regular file")
    return p


def read_json_object(path: str | Path, what: str, error: type[MoaError] = MoaError) -> dict[str, Any]:
    """Parse a JSON file that must hold one object."""
    p = require_file(path, what, error)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{p}: {what} file is not UTF-8 text") from None
    except OSError as exc:
        raise error(f"{p}: cannot read {what} file ({exc.strerror or exc})") from None
    if not text.strip():
        raise error(f"{p}: {what} file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{p}: {what} file is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(f"{p}: {what} file is nested too deeply to be a {what}") from None
    if not isinstance(data, dict):
        raise error(f"{p}: {what} file must hold a JSON object, got {type(data).__name__}")
    return data
