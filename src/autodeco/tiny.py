"""Tiny, randomly initialised models of real architectures and a tiny real tokenizer.

For tests: they run in milliseconds on a CPU and need no network. Each is
the real transformers class, built from a config with small dimensions.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

# The architectures of the released heads (llama, qwen2, qwen3_moe, gpt_oss, deepseek_v3) and two more.
TINY_ARCHITECTURES = ("llama", "qwen2", "qwen3_moe", "gpt_oss", "deepseek_v3", "gemma3_text", "gpt2")

_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
_OVERRIDES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    "deepseek_v3": dict(
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1,
        num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=8, rope_interleave=True,
    ),
    "gemma3_text": dict(head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
}

TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "Question: What is 2 + 3? Answer: 5. Question: What is 7 - 4? Answer: 3. "
    "Once upon a time there was a small model that learned to choose its own temperature. "
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! , . : ; ( ) user assistant system"
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with BOS/EOS/pad and a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([TINY_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )


def tiny_model(architecture: str = "llama", vocab_size: int = 384, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised causal LM of a real architecture (see ``TINY_ARCHITECTURES``)."""
    if architecture not in _OVERRIDES:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose from {TINY_ARCHITECTURES}")
    fields = {} if architecture == "gpt2" else dict(_COMMON)
    fields.update(_OVERRIDES[architecture])
    config = AutoConfig.for_model(architecture, vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
