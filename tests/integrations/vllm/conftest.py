"""Fixtures for the vLLM plugin tests: one engine per tiny checkpoint, started once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import start_engine, write_checkpoint


MOVED_BASE = "the/base/moved/away"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """architecture -> (checkpoint dir, base dir): llama and gemma3 heads-only, qwen2 merged. The
    gemma3 heads name a base that is not there (as after a move): its engine is given the base by
    hf_overrides, the plugin's --base."""
    root = tmp_path_factory.mktemp("vllm-checkpoints")
    made = {
        "llama": write_checkpoint(root, "llama"),
        "qwen2": write_checkpoint(root, "qwen2", merged=True),
        "gemma3_text": write_checkpoint(root, "gemma3_text"),
    }
    config = Path(made["gemma3_text"][0]) / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"base_model_name_or_path": MOVED_BASE}))
    return made


@pytest.fixture(scope="session")
def engines(checkpoints):
    """One engine per checkpoint, started once for the whole session."""
    started = {
        name: start_engine(checkpoint, base, hf_overrides={"base_model_name_or_path": base} if name == "gemma3_text" else None)
        for name, (checkpoint, base) in checkpoints.items()
    }
    yield started
    for llm in started.values():
        llm.llm_engine.engine_core.shutdown()
