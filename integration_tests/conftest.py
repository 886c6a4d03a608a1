"""Shared fixtures: a tiny seeded model with the reference tokenizer, saved like a real checkpoint."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build_tokenizer():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_tokenizer", ROOT / "tools" / "build_tokenizer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GQA Llama (random, seed 0) with the reference tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tok = _build_tokenizer()
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def reference_model(tiny_model: Path) -> Path:
    """The committed reference model (models/moa-reference), or the tiny model while none is committed."""
    path = ROOT / "models" / "moa-reference"
    return path if (path / "config.json").is_file() else tiny_model


@pytest.fixture(scope="session")
def moa_cli():  # type: ignore[no-untyped-def]
    """The `moa` runner below, as a fixture (test modules cannot import conftest under importlib mode)."""
    return moa


def moa(*args: object, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``moa`` command in a subprocess (as a user would)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "moa_plan.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
