"""Shared fixtures: plans for the tiny models, and helpers to compare generate() with an oracle."""

from __future__ import annotations

from typing import Any

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def greedy() -> dict[str, Any]:
    return {"do_sample": False, "output_logits": True, "return_dict_in_generate": True}
