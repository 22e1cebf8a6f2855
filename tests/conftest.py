"""Shared fixtures: tiny real-architecture models and a tiny real tokenizer; never the network."""

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from autodeco import AutoDecoModelForCausalLM
from autodeco.tiny import tiny_model, tiny_tokenizer

# The vLLM plugin's tests need vLLM, which pins an older transformers: `make test` runs them in a
# virtual environment of their own (.venv-vllm), and this one skips collecting them.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["integrations/vllm"]


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_model():
    """AutoDeco model on a tiny random base: make_model("qwen2", seed=1)."""

    def build(architecture: str = "llama", seed: int = 0, **head_options) -> AutoDecoModelForCausalLM:
        base = tiny_model(architecture, seed=seed)
        torch.manual_seed(seed + 1000)
        return AutoDecoModelForCausalLM.from_base(base, **head_options)

    return build


@pytest.fixture
def base_dir(tmp_path, tokenizer):
    """A tiny Llama saved as a normal Hugging Face folder (weights + tokenizer)."""
    path = tmp_path / "base"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
