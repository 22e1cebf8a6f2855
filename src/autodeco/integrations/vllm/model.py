"""The vLLM model for AutoDeco checkpoints: vLLM's own implementation of the base plus the heads.

The base is whatever class vLLM registers for the base architecture (``base_model_type`` of the
released config.json), built through vLLM's own ``init_vllm_registered_model``, so its paged
attention, tensor/pipeline/expert parallelism and quantization are vLLM's. The heads are tiny
float32 MLPs, replicated on every rank.

vLLM samples from what ``compute_logits`` returns. Here that is the AutoDeco distribution as
logits: ``logits / T`` with every token outside the nucleus at P set to -inf
(:func:`autodeco.sampling.nucleus_logits`), T and P from the heads on the same post-norm hidden
states, the base's logits as the base computes them (soft-capping included). A request with
temperature 1, top_p 1 and no top_k/min_p then draws exactly from ``top_p_probs(l, T, P)``, and
vLLM's speculative decoding verifies every drafted position against its own learned T and P.

``compute_logits_local`` is deliberately absent: batch-sharded sampling hands each rank one
vocabulary shard of the logits, and the nucleus needs the whole vocabulary. Without it vLLM
falls back to full logits (with a warning when that sharding is asked for).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models import ModelRegistry
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix

from autodeco.configuration import MERGED_PREFIX, AutoDecoConfig
from autodeco.errors import AutoDecoError
from autodeco.heads import AutoDecoHeads, SoftmaxOut, heads_from_tensors
from autodeco.io import safetensors_files
from autodeco.sampling import nucleus_logits

HEADS_PREFIX = "heads."  # this module's attribute holding the heads


@dataclass
class LearnedStep:
    """The last ``compute_logits`` call's inputs to the distribution, for the per-request
    controls (:mod:`autodeco.integrations.vllm.controls`) to rebuild rows from."""

    logits: torch.Tensor  # [N, V] the base's logits
    temperature: torch.Tensor  # [N] float32, learned
    top_p: torch.Tensor  # [N] float32, learned


_current: "AutoDecoForVLLM | None" = None  # this worker's model: the controls processor reads its last step


def current_model() -> "AutoDecoForVLLM":
    """The AutoDeco model this vLLM worker process serves."""
    if _current is None:
        raise AutoDecoError("no AutoDeco model is loaded in this vLLM worker; autodeco controls need an AutoDeco checkpoint")
    return _current


class AutoDecoForVLLM(nn.Module, SupportsPP):
    """``AutoDecoModelForCausalLM`` on vLLM: ``self.llm`` is vLLM's base model, ``self.heads`` the heads."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if not isinstance(config, AutoDecoConfig) or config.text_config is None:
            raise AutoDecoError(
                f"{vllm_config.model_config.model} is not an AutoDeco checkpoint with a base_model_type; "
                "its config.json needs model_type 'autodeco' and base_model_type (write it with autodeco init or save_pretrained)"
            )
        base_config = config.text_config
        architecture = base_architecture(base_config)
        self.llm = init_vllm_registered_model(vllm_config, hf_config=base_config, prefix=maybe_prefix(prefix, "llm"), architectures=[architecture])
        hidden = base_config.hidden_size
        declared = config.temperature_hidden_size
        if declared is not None and declared != hidden:
            raise AutoDecoError(hidden_size_error(declared, hidden, vllm_config.model_config.model))
        self.heads = AutoDecoHeads(
            hidden, use_enhanced_features=config.use_enhanced_features,
            enable_temperature_head=config.enable_temperature_head, enable_top_p_head=config.enable_top_p_head,
        ).float()
        self.checkpoint = vllm_config.model_config.model
        self.base_name_or_path = config.base_model_name_or_path
        self.last_step: LearnedStep | None = None
        global _current
        _current = self

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The base's token embeddings."""
        return self.llm.embed_input_ids(input_ids)

    def make_empty_intermediate_tensors(self, *args: Any, **kwargs: Any) -> Any:
        """The base's pipeline-stage buffers (vLLM's SupportsPP contract)."""
        return self.llm.make_empty_intermediate_tensors(*args, **kwargs)

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None, **kwargs: Any,
    ) -> Any:
        """The base's forward, unchanged: post-norm hidden states (or a pipeline stage's tensors)."""
        return self.llm(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The AutoDeco distribution as logits (see the module docstring); None where the base
        returns None (tensor-parallel ranks that do not receive the gathered logits)."""
        logits = self.llm.compute_logits(hidden_states)
        if logits is None:
            return None
        distribution, self.last_step = learned_logits(self.heads, hidden_states, logits)
        return distribution

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The checkpoint's tensors: the 8 head tensors, and the base's as ``llm.*`` (merged) or,
        for a heads-only dir, from the base named by ``base_model_name_or_path``."""
        head_tensors: dict[str, torch.Tensor] = {}
        stream = iter(weights)
        base_weights: Iterator[tuple[str, torch.Tensor]] | None = None
        for name, tensor in stream:
            if name.startswith(MERGED_PREFIX):
                base_weights = itertools.chain([(name[len(MERGED_PREFIX):], tensor)], _diverting_heads(stream, head_tensors))
                break
            head_tensors[name] = tensor
        if base_weights is None:  # heads-only: every tensor was read
            base_weights = base_checkpoint_weights(self.base_name_or_path, self.checkpoint)
        loaded = {MERGED_PREFIX + name for name in self.llm.load_weights(base_weights)}
        heads = heads_from_tensors(
            head_tensors, str(self.checkpoint), use_enhanced_features=self.heads.top_p_head.use_enhanced_features,
            enable_temperature_head=self.heads.enable_temperature_head, enable_top_p_head=self.heads.enable_top_p_head,
        )
        if heads.hidden_size != self.heads.hidden_size:
            raise AutoDecoError(hidden_size_error(heads.hidden_size, self.heads.hidden_size, self.checkpoint))
        self.heads.load_state_dict(heads.state_dict())
        return loaded | {HEADS_PREFIX + name for name in heads.state_dict()}


def learned_logits(heads: AutoDecoHeads, hidden_states: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, LearnedStep]:
    """(the AutoDeco distribution as logits [N, V], the step it came from): T and P from the heads
    in float32, then :func:`autodeco.sampling.nucleus_logits`, reusing the statistics' softmax."""
    softmax = SoftmaxOut.empty_for(logits) if heads.computes_probabilities else None
    temperature, top_p = heads(hidden_states, logits, softmax)
    step = LearnedStep(logits, temperature.float(), top_p.float())
    distribution = nucleus_logits(
        logits, step.temperature, step.top_p,
        probs=None if softmax is None else softmax.probs, probs_top_ids=None if softmax is None else softmax.top_ids,
    )
    return distribution, step


def _diverting_heads(stream: Iterator[tuple[str, torch.Tensor]], head_tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """The base tensors of a merged checkpoint, without the prefix; head tensors go aside."""
    for name, tensor in stream:
        if name.startswith(MERGED_PREFIX):
            yield name[len(MERGED_PREFIX):], tensor
        else:
            head_tensors[name] = tensor


def hidden_size_error(heads_hidden: int, base_hidden: int, checkpoint: str) -> str:
    return (
        f"the heads in {checkpoint} expect hidden size {heads_hidden} but the base has hidden size {base_hidden}: "
        "these heads were trained for another base; point base_model_name_or_path at the base they were made for"
    )


def base_architecture(base_config) -> str:
    """The vLLM class name for the base, checked against vLLM's registry (named with the list
    of supported ones when vLLM has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = list(getattr(base_config, "architectures", None) or [])
    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(base_config.model_type)
    candidates = names + ([mapped] if mapped and mapped not in names else [])
    supported = ModelRegistry.get_supported_archs()
    for name in candidates:
        if name in supported:
            return name
    causal = sorted(a for a in supported if a.endswith("ForCausalLM") and a != "AutoDecoModelForCausalLM")
    import vllm

    raise AutoDecoError(
        f"vLLM {vllm.__version__} implements no {' or '.join(candidates) or 'class'} for base_model_type {base_config.model_type!r}, "
        f"so it cannot serve these heads; it implements {len(causal)} causal LMs: {', '.join(causal)}"
    )


def base_checkpoint_weights(name_or_path: str | None, checkpoint: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the base's safetensors files (a local folder, a shipped alias such as
    ``gemma-3-270m``, or a hub id), read one at a time."""
    from safetensors import safe_open

    folder = locate_base(name_or_path, checkpoint)
    files = safetensors_files(folder)
    if not files:
        raise AutoDecoError(f"the base folder {folder} holds no model.safetensors (or index); autodeco loads base weights from safetensors only")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def locate_base(name_or_path: str | None, checkpoint: str) -> Path:
    """The local folder of a heads-only checkpoint's base, with the fix named when there is none."""
    override = "pass it with --hf-overrides '{\"base_model_name_or_path\": \"/path/to/base\"}' (LLM(hf_overrides=...))"
    if not name_or_path:
        raise AutoDecoError(f"{checkpoint}/config.json names no base_model_name_or_path and holds no llm.* tensors; {override}")
    from autodeco.models import MODEL_ALIASES, resolve_model

    if name_or_path in MODEL_ALIASES:
        return Path(resolve_model(name_or_path))
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name_or_path, allow_patterns=["*.safetensors", "*.safetensors.index.json", "config.json"]))
    except Exception as error:  # hub errors have many types: offline, not found, bad id
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AutoDecoError(
            f"cannot find the base {name_or_path!r} named in {checkpoint}/config.json: no local folder {local.resolve()} "
            f"and no reachable hub repo ({first_line}); {override}"
        ) from error
