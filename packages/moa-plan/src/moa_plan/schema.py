"""The committed JSON Schema of the plan file (``plan.schema.json`` beside this module)."""

from __future__ import annotations

import json
from pathlib import Path

from moa_plan.plan import Plan

__all__ = ["SCHEMA_PATH", "plan_schema", "plan_schema_json"]

SCHEMA_PATH = Path(__file__).with_name("plan.schema.json")


def plan_schema() -> dict[str, object]:
    """JSON Schema of `Plan` as pydantic generates it."""
    return Plan.model_json_schema()


def plan_schema_json() -> str:
    """The schema as stable JSON text (the committed file's exact content)."""
    return json.dumps(plan_schema(), indent=2, sort_keys=True) + "\n"
