"""Shared fixtures: small synthetic profiles on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_optimizer import synthetic_fingerprint, synthetic_profiles

LENGTHS = (512, 1024, 2048)


@pytest.fixture(scope="session")
def small_profiles():
    """Profiles of a 4-layer, 8-query-head, 4-KV-head synthetic model at 512/1024/2048."""
    return synthetic_profiles(synthetic_fingerprint(4, 8, 4), LENGTHS, seed=1)


@pytest.fixture(scope="session")
def profile_files(tmp_path_factory, small_profiles) -> list[Path]:
    root = tmp_path_factory.mktemp("profiles")
    return [p.save(root / f"p{p.length}.safetensors") for p in small_profiles]
