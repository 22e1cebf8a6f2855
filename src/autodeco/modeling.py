"""AutoDecoModelForCausalLM: any Hugging Face causal LM plus the two heads, in one forward pass.

Checkpoint formats (both as released, spec section 2):

- heads-only (PEFT-like): ``config.json`` (model_type "autodeco", the base's name and config) and
  ``model.safetensors`` with exactly the 8 head tensors; the base is loaded from its own path.
- merged: every base tensor renamed ``llm.<key>`` plus the 8 head tensors, possibly sharded with a
  ``model.safetensors.index.json``, and the autodeco ``config.json``.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, LogitsProcessorList, PretrainedConfig, PreTrainedModel,
    PreTrainedTokenizerBase, StoppingCriteriaList,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import ModelOutput, TransformersKwargs

from autodeco.configuration import MERGED_PREFIX, AutoDecoConfig, base_config, check_autodeco_fields
from autodeco.errors import AutoDecoError
from autodeco.generation import (
    REFUSED_ARGUMENTS, AutoDecoLogitsProcessor, GenerationTrace, RecordingStoppingCriteria, autodeco_generation_config, check_generation_config,
)
from autodeco.heads import AutoDecoHeads, SoftmaxOut, heads_from_tensors
from autodeco.io import INDEX_NAME, atomic_save_tensors, atomic_write_text, open_safetensors, read_json_object, safetensors_files
from autodeco.kv_cache import forward_with_cache
from autodeco.models import MODEL_ALIASES, load_tokenizer, resolve_heads, resolve_model
from autodeco.sampling import SamplingParams

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")  # torch.save files, never loaded: unpickling runs code


@dataclass
class AutoDecoOutput(ModelOutput):
    """One forward pass: unscaled ``logits [B, L, V]``, ``temperature [B, L]``, ``top_p [B, L]``
    and the KV ``cache`` to pass to the next call (transformers 5 calls it ``cache``; the old
    name ``past_key_values`` reads the same object). ``probs [B, L, V]``, when asked for, is the
    float32 softmax(logits / (T + 1e-8)) the top-p head's statistics were computed on, up to a
    factor per row (its largest entry is 1), and ``probs_top_ids [B, L, CANDIDATES]`` the ids of
    its largest entries, descending. ``hidden_states`` and ``attentions`` are the base's, when
    asked for with ``output_hidden_states`` / ``output_attentions``."""

    logits: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    cache: Any = None
    probs: torch.Tensor | None = None
    probs_top_ids: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    @property
    def past_key_values(self) -> Any:
        return self.cache


@dataclass
class AutoDecoGenerateOutput(GenerateDecoderOnlyOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns: Hugging Face's output
    (sequences, and scores, logits, attentions, hidden states when asked for) plus the T and P
    used for every new token, ``[B, steps]`` (0 after a row's end)."""

    temperatures: torch.Tensor | None = None
    top_ps: torch.Tensor | None = None


class AutoDecoModelForCausalLM(PreTrainedModel, GenerationMixin):
    """A frozen base causal LM (``self.llm``) and the AutoDeco heads (``self.heads``), as a
    transformers model: ``AutoModelForCausalLM.from_pretrained(heads_dir)`` loads it once
    ``autodeco`` is imported, and ``generate()`` is transformers' own, with the learned T and P
    entering as a logits processor (:mod:`autodeco.generation`).

    The heads read the tensor the base feeds its LM head, captured by a forward hook, so every
    architecture works unchanged (final norms, logit soft-capping and all stay the base's own).
    """

    config_class = AutoDecoConfig
    base_model_prefix = "llm"
    main_input_name = "input_ids"
    # Assisted generation is exact speculative decoding on autodeco's decode engine, which builds on
    # this class: `autodeco.decoding` installs its entry point here (`import autodeco` imports it).
    assisted_generate: ClassVar[Callable[..., Any] | None] = None
    # attention runs in the base, with the base's own implementation
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        llm: PreTrainedModel,
        heads: AutoDecoHeads,
        base_name_or_path: str | None = None,
    ) -> None:
        hidden_size = base_hidden_size(llm.config)
        if heads.hidden_size != hidden_size:
            raise AutoDecoError(
                f"the heads expect hidden size {heads.hidden_size} but the base has hidden size {hidden_size}: "
                "these heads were trained for another base model; pass the base they were made for"
            )
        base_name = base_name_or_path or getattr(llm, "name_or_path", "") or ""
        fields = released_config(llm.config, heads, base_name)
        super().__init__(AutoDecoConfig(**{k: v for k, v in fields.items() if k != "model_type"}, text_config=llm.config))
        self.llm = llm
        self.heads = heads.to(device=llm.get_output_embeddings().weight.device)
        self.base_name_or_path = base_name
        self.generation_config = autodeco_generation_config(llm.generation_config)
        self._lm_head_input: torch.Tensor | None = None
        self._trace: GenerationTrace | None = None  # set while transformers' generate() runs
        llm.get_output_embeddings().register_forward_pre_hook(self._capture_lm_head_input)
        llm.requires_grad_(False)

    def _capture_lm_head_input(self, module: nn.Module, args: tuple) -> tuple:
        hidden = lm_head_layout(args[0])
        self._lm_head_input = hidden
        return (hidden, *args[1:])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(
        cls,
        base: str | os.PathLike | PreTrainedModel,
        *,
        use_enhanced_features: bool = True,
        enable_temperature_head: bool = True,
        enable_top_p_head: bool = True,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ) -> "AutoDecoModelForCausalLM":
        """A base model (path, hub id or loaded model) with new, untrained heads."""
        llm = load_base(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        heads = AutoDecoHeads(
            base_hidden_size(llm.config),
            use_enhanced_features=use_enhanced_features,
            enable_temperature_head=enable_temperature_head,
            enable_top_p_head=enable_top_p_head,
        )
        return cls(llm, heads, base_name_or_path=base_reference(base) if isinstance(base, (str, os.PathLike)) else None)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        base: str | os.PathLike | PreTrainedModel | None = None,
        *,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        **hf_kwargs: Any,
    ) -> "AutoDecoModelForCausalLM":
        """Load a heads-only dir (base from ``base_model_name_or_path`` unless ``base`` overrides
        it), a merged dir (``llm.*`` tensors; ``base`` must then be None), or heads shipped with
        the package by name (e.g. ``"gemma-3-270m"``).

        ``AutoModelForCausalLM.from_pretrained(path, ...)`` lands here too: its ``torch_dtype``
        and a single-device ``device_map`` are read as ``dtype`` and ``device``; the config it
        read is read again here; other loading options are refused, naming them."""
        dtype, device = _hf_loading_options(dtype, device, hf_kwargs)
        check_device(device)  # before the heads and the slow base
        directory = resolve_heads(path)
        config = read_autodeco_config(directory)
        tensor_names = _checkpoint_tensor_names(directory)
        heads = _heads_from_tensors(_read_head_tensors(directory, tensor_names), config, directory)  # before the slow base
        if any(name.startswith(MERGED_PREFIX) for name in tensor_names):
            if base is not None:
                raise AutoDecoError(f"{directory} is a merged checkpoint that already holds its base; drop base=")
            head_names = {name for name in tensor_names if not name.startswith(MERGED_PREFIX)}
            llm = _load_merged_base(directory, config, head_names, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
            return cls(llm, heads, base_name_or_path=config.get("base_model_name_or_path"))
        base_ref = base if base is not None else config.get("base_model_name_or_path")
        if not base_ref:
            raise AutoDecoError(f"{directory / CONFIG_NAME} names no base_model_name_or_path; pass the base explicitly (base=... or --model)")
        llm = load_base(base_ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        base_name = base_reference(base_ref) if isinstance(base_ref, (str, os.PathLike)) else config.get("base_model_name_or_path")
        return cls(llm, heads, base_name_or_path=base_name)

    def load_tokenizer(self, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
        """The base's tokenizer: from its folder or hub id, or for an alias such as the shipped
        heads' ``gemma-3-270m`` from its converted cache folder (no hub call; a plain
        ``AutoTokenizer.from_pretrained("gemma-3-270m")`` would ask the hub for that name)."""
        return load_tokenizer(self.base_name_or_path, trust_remote_code=trust_remote_code)

    # ------------------------------------------------------------------ saving
    def autodeco_config(self) -> dict[str, Any]:
        """The released config.json: the base config's fields plus the autodeco fields."""
        return released_config(self.llm.config, self.heads, self.base_name_or_path)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the released heads-only format: config.json + model.safetensors (8 tensors).
        Each file is written to a temporary name and renamed, so a crash never leaves half a file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        atomic_save_tensors(tensors, directory / WEIGHTS_NAME)
        atomic_write_text(json.dumps(self.autodeco_config(), indent=2, sort_keys=True) + "\n", directory / CONFIG_NAME)

    def save_merged(self, directory: str | os.PathLike, max_shard_size: str | int = "5GB") -> None:
        """Write the released merged format: ``llm.<key>`` base tensors + the 8 head tensors,
        sharded like Hugging Face checkpoints, and the autodeco config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tied = set(getattr(self.llm, "all_tied_weights_keys", None) or {})
        tensors = {
            MERGED_PREFIX + k: v.detach().contiguous().cpu() for k, v in self.llm.state_dict().items() if k not in tied
        }
        tensors.update({k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()})
        split = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
        for filename, names in split.filename_to_tensors.items():
            atomic_save_tensors({name: tensors[name] for name in names}, directory / filename)
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            atomic_write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", directory / INDEX_NAME)
        atomic_write_text(json.dumps(self.autodeco_config(), indent=2, sort_keys=True) + "\n", directory / CONFIG_NAME)
        # only the special tokens: the heads replace the base's sampling defaults (Gemma ships top_k 64, top_p 0.95),
        # which engines such as vLLM would otherwise apply on top of the learned values
        base = self.llm.generation_config
        GenerationConfig(bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id).save_pretrained(directory)

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Any = None,
        compute_heads: bool = True,
        return_probs: bool = False,
        **kwargs: Any,
    ) -> AutoDecoOutput:
        """One pass of the base; the heads run on the hidden states fed to its LM head.

        ``logits_to_keep=n`` keeps the last n positions only (1 for decoding), for the logits and
        for T and P alike. The KV cache may be passed as ``past_key_values`` or ``cache``.
        ``compute_heads=False`` skips the heads (T and P are None): what static baselines pay.
        ``return_probs=True`` also returns the softmax the top-p head computed, unnormalised, and
        its most likely ids (None when its checkpoint uses no statistics), for decoding to sample
        from at the learned T. Other keywords (``output_attentions``, ``return_dict`` ...) go
        to the base.
        """
        if past_key_values is not None and cache is not None:
            raise AutoDecoError("pass the KV cache once, as cache= or past_key_values=, not both")
        trace = self._trace
        return_probs = return_probs or (trace is not None and trace.wants_probs)
        self._lm_head_input = None
        out, out_cache = forward_with_cache(
            self.llm,
            cache if cache is not None else past_key_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        hidden, self._lm_head_input = self._lm_head_input, None
        base_outputs = {"hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}
        if not compute_heads:
            return AutoDecoOutput(logits=out.logits, cache=out_cache, **base_outputs)
        if hidden is None:
            raise AutoDecoError(f"{type(self.llm).__name__} did not call its output embedding; AutoDeco needs a causal LM head")
        softmax = SoftmaxOut.empty_for(out.logits) if return_probs and self.heads.computes_probabilities else None
        temperature, top_p = self.heads(hidden, out.logits, softmax)
        if trace is not None:  # what the logits processor of transformers' generate() samples with
            trace.last = (temperature[:, -1], top_p[:, -1], *((None, None) if softmax is None else (softmax.probs[:, -1], softmax.top_ids[:, -1])))
        return AutoDecoOutput(
            logits=out.logits, temperature=temperature, top_p=top_p, cache=out_cache,
            probs=None if softmax is None else softmax.probs, probs_top_ids=None if softmax is None else softmax.top_ids, **base_outputs,
        )

    # ------------------------------------------------------------------ transformers' generate
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        *,
        assistant_model: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | AutoDecoGenerateOutput:
        """Transformers' ``generate()``, decoding with the learned T and P.

        ``temperature`` and ``top_p`` act as multipliers on the learned values (the released
        serving semantics: 1 and 1 mean pure AutoDeco); ``do_sample=False`` (or temperature 0)
        is greedy; ``top_k`` cuts before the nucleus. Every other feature is transformers' own
        (streamers, ``num_return_sequences``, stopping criteria and ``stop_strings``, penalties,
        ``output_scores``: the log of the AutoDeco distribution up to a constant per row ...); the
        few with no meaning under learned T and P (beam search and its fields, guidance ...)
        raise :class:`AutoDecoError` (see :mod:`autodeco.generation`). With
        ``return_dict_in_generate=True`` the output also holds the T and P used per new token.
        ``seed`` seeds torch's generator for this call only.

        Assisted generation is exact speculative decoding here, on autodeco's own engine:
        ``assistant_model=`` (its greedy drafts, ``num_assistant_tokens`` per step) or
        ``prompt_lookup_num_tokens=N`` (n-gram drafts); it gives what that engine gives without
        drafts, seed for seed (transformers' own assisted sampling with a logits processor is not
        exact). It honours the fields of :data:`autodeco.generation.SPECULATIVE_FIELDS`.
        """
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2 and bool((mask[:, -1] == 0).any()):
            raise AutoDecoError("the batch is right-padded; pad on the left (tokenizer.padding_side = 'left') so every row ends with its last token")
        if assistant_model is not None or kwargs.get("prompt_lookup_num_tokens") or getattr(generation_config, "prompt_lookup_num_tokens", None):
            if logits_processor or stopping_criteria:
                raise AutoDecoError("assisted generation (exact speculative decoding) takes no logits_processor or stopping_criteria; drop them, or the assistant")
            if self.assisted_generate is None:
                raise AutoDecoError("assisted generation needs autodeco's decode engine; import autodeco (it installs it) before calling generate()")
            return self.assisted_generate(self, input_ids, generation_config, assistant_model, seed, kwargs)
        refused = sorted(k for k in REFUSED_ARGUMENTS if kwargs.get(k) is not None)
        if refused:
            raise AutoDecoError(f"generate() with AutoDeco does not support {refused[0]}: {REFUSED_ARGUMENTS[refused[0]]}")
        config = self._prepare_generation_config(generation_config, **kwargs)[0]  # what transformers will resolve
        check_generation_config(config, config.get_generation_mode(), self._default_generation_config())
        outer, self._trace = self._trace, GenerationTrace()  # outer: token healing calls generate() inside generate()
        trace = self._trace
        try:
            with _seeded(seed, self.device):
                result = super().generate(inputs, generation_config, logits_processor, stopping_criteria, **kwargs)
        finally:
            self._trace = outer
        if not isinstance(result, ModelOutput):
            return result
        steps = result.sequences.shape[1] - (input_ids.shape[1] if input_ids is not None else 0)
        temperatures, top_ps = trace.per_token(steps)
        return AutoDecoGenerateOutput(**result, temperatures=temperatures, top_ps=top_ps)

    def _default_generation_config(self) -> GenerationConfig:
        """This model's generation config with transformers' defaults filled in: what a field
        set by the caller is compared with."""
        return self._prepare_generation_config(None)[0]

    # transformers' generate() hooks
    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The base's own input preparation (some architectures have their own): our forward takes what the base's does."""
        return self.llm.prepare_inputs_for_generation(*args, **kwargs)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        accepted = {
            *inspect.signature(self.llm.forward).parameters, *inspect.signature(self.llm.prepare_inputs_for_generation).parameters,
            *inspect.signature(self.forward).parameters, *TransformersKwargs.__optional_keys__,
        }
        unused = sorted(k for k, v in model_kwargs.items() if v is not None and k not in accepted)
        if unused:
            hint = " (the tokenizer returned token_type_ids: call it with return_token_type_ids=False)" if "token_type_ids" in unused else ""
            raise AutoDecoError(
                f"generate() got {unused}, which {type(self.llm).__name__} does not take{hint}; drop them "
                "(a misspelt generation argument shows up here too)"
            )

    def _get_logits_processor(self, generation_config: GenerationConfig, *args: Any, **kwargs: Any) -> LogitsProcessorList:
        """Transformers' processors with the AutoDeco processor inserted after those that change
        the logits and before the warpers that cut a distribution; transformers' temperature,
        top-k and top-p warpers are left out (the AutoDeco processor applies them)."""
        trace = self._trace
        if trace is None:
            raise AutoDecoError("AutoDeco's logits processor exists only inside generate(); call model.generate")
        sample = bool(generation_config.do_sample)
        temperature = generation_config.temperature if generation_config.temperature is not None else 1.0
        top_p = generation_config.top_p if generation_config.top_p is not None else 1.0
        top_k = generation_config.top_k or 0
        SamplingParams(temperature_scale=temperature, top_p_scale=top_p, top_k=top_k)  # checks them: AutoDecoError naming a bad one
        without_ours = copy.copy(generation_config)
        without_ours.temperature = without_ours.top_p = without_ours.top_k = None
        before_warpers = copy.copy(without_ours)
        before_warpers.do_sample, before_warpers.watermarking_config, before_warpers.renormalize_logits = False, None, False
        processors = super()._get_logits_processor(without_ours, *args, **kwargs)
        position = len(super()._get_logits_processor(before_warpers, *args, **kwargs))
        # at the heads' own T on untouched logits, the top-p head's softmax is the one to sample from
        trace.wants_probs = sample and position == 0 and temperature == 1.0 and not top_k
        processors.insert(position, AutoDecoLogitsProcessor(trace, temperature, top_p, top_k, trace.wants_probs, greedy_search=not sample))
        return processors

    def _get_stopping_criteria(self, *args: Any, **kwargs: Any) -> StoppingCriteriaList:
        criteria = super()._get_stopping_criteria(*args, **kwargs)
        return criteria if self._trace is None else RecordingStoppingCriteria(criteria, self._trace)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's generator seeded with ``seed`` inside the block and restored after (nothing when None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def released_config(llm_config: PretrainedConfig, heads: AutoDecoHeads, base_name_or_path: str) -> dict[str, Any]:
    """The released config.json of a base config and heads: the base config's fields plus the autodeco fields."""
    base = llm_config.to_dict()
    hidden = heads.hidden_size
    return {
        **base,
        "model_type": "autodeco",
        "architectures": ["AutoDecoModelForCausalLM"],
        "base_model_name_or_path": base_name_or_path,
        "base_model_type": base["model_type"],
        "enable_temperature_head": heads.enable_temperature_head,
        "enable_top_p_head": heads.enable_top_p_head,
        "use_enhanced_features": heads.top_p_head.use_enhanced_features,
        "temperature_hidden_size": hidden,
        "top_p_hidden_size": hidden,
    }


# Options AutoModelForCausalLM.from_pretrained passes along that loading a local AutoDeco dir does not need.
_HF_PASSED_THROUGH = ("config", "_from_auto", "adapter_kwargs", "local_files_only", "revision", "cache_dir", "_commit_hash")


def _hf_loading_options(dtype: torch.dtype | str, device: str | torch.device | None, hf_kwargs: dict[str, Any]) -> tuple[torch.dtype | str, str | torch.device | None]:
    """(dtype, device) with transformers' spellings (``torch_dtype``, a one-device ``device_map``)
    folded in; any other option raises :class:`AutoDecoError` naming it."""
    options = {k: v for k, v in hf_kwargs.items() if k not in _HF_PASSED_THROUGH and v is not None and v != {}}
    dtype = options.pop("torch_dtype", dtype)
    device_map = options.pop("device_map", None)
    if isinstance(device_map, (str, torch.device, int)) and device_map not in ("auto", "balanced", "sequential"):
        device = device_map
    elif device_map is not None:
        raise AutoDecoError(f"device_map={device_map!r} is not supported: AutoDeco loads onto one device; pass device_map='cpu', 'cuda:0' ... or device=")
    if options:
        raise AutoDecoError(f"AutoDecoModelForCausalLM.from_pretrained does not support {sorted(options)}; it takes base=, dtype=, device=, trust_remote_code=")
    return dtype, device


# ---------------------------------------------------------------------- loading helpers
def lm_head_layout(hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` with the strides of a fresh tensor of its shape. The prefill's last position
    (``logits_to_keep=1``) is a ``[B, 1, H]`` slice with strides ``(L * H, H, 1)``, which
    ``.contiguous()`` keeps (size-1 dims count as contiguous). On such a view, torch's CPU
    matmul with frozen bf16 weights runs a bmm that copies the whole LM head per row (Gemma-3-270M:
    ~550 ms for a batch-1 prefill instead of ~29 ms; 7 s instead of 0.2 s at batch 8)."""
    if hidden.stride() == torch.empty(hidden.shape, device="meta").stride():
        return hidden
    return torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device).copy_(hidden)


def base_hidden_size(config: Any) -> int:
    return config.get_text_config().hidden_size


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), checked before anything loads: a name
    torch does not know, a backend this torch build lacks (``cuda`` on a CPU-only torch) or a
    device index past the last device raise :class:`AutoDecoError`."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise AutoDecoError(f"device {str(device)!r} is not a device name torch knows ({error}); use cpu, cuda, cuda:N or mps") from error
    if resolved.type == "cpu":
        return resolved
    backend = getattr(torch, resolved.type, None)  # torch.cuda, torch.mps, torch.xpu ...
    if not (hasattr(backend, "is_available") and backend.is_available()):
        cpu_only = resolved.type == "cuda" and torch.version.cuda is None
        why = "is a CPU-only build; install a CUDA build of torch" if cpu_only else f"finds no {resolved.type} device; check the drivers"
        raise AutoDecoError(f"device {str(device)!r} is not available: this torch ({torch.__version__}) {why}, or use --device cpu")
    count = backend.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise AutoDecoError(f"device {str(device)!r} does not exist: this machine has {count} {resolved.type} device(s), numbered from 0")
    return resolved


def base_reference(base: str | os.PathLike) -> str:
    """How a config.json names a base: a local folder by its absolute path, so the heads load
    from any working directory; an alias (``gemma-3-270m``) or a hub id as given."""
    name = str(base)
    local = Path(name).expanduser()
    return str(local.resolve()) if name not in MODEL_ALIASES and local.exists() else name


def load_base(
    base: str | os.PathLike | PreTrainedModel,
    *,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A loaded base causal LM, from a model object, a local folder, a hub id or an alias of
    :mod:`autodeco.models` (e.g. ``gemma-3-270m``)."""
    check_device(device)
    if isinstance(base, PreTrainedModel):
        return base.to(device) if device is not None else base
    if isinstance(base, nn.Module):
        raise AutoDecoError(f"base must be a transformers PreTrainedModel, a path or a hub id, not {type(base).__name__}")
    source = resolve_model(base)
    if Path(source).is_dir():
        _check_local_checkpoint(Path(source))
    try:
        llm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as err:
        local = Path(base).expanduser().resolve()
        where = f"the local folder {local} ({'exists but holds no loadable model' if local.exists() else 'does not exist'})"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AutoDecoError(
            f"cannot load base model {str(base)!r}: looked in {where} and for a Hugging Face hub id ({first_line}); "
            "pass a local model folder or a hub id this machine can reach"
        ) from err
    llm.eval()
    return llm.to(device) if device is not None else llm


def _check_local_checkpoint(folder: Path) -> None:
    """Name a broken file of a local base folder before transformers trips over it with a
    traceback: config.json that is not a JSON object, a bad index, an unreadable safetensors file."""
    if (folder / CONFIG_NAME).is_file():
        read_json_object(folder / CONFIG_NAME, "fix it, or save the base again with save_pretrained")
    for file in safetensors_files(folder):
        with open_safetensors(file):
            pass  # opening reads and checks the header against the file's size


def read_autodeco_config(directory: Path) -> dict[str, Any]:
    """The autodeco config.json of a heads-only or merged dir, checked (its AutoDeco fields'
    types too: a string "no" must not read as true)."""
    config_path = directory / CONFIG_NAME
    if directory.is_file():
        hint = "pass the folder that holds it and its config.json" if directory.suffix == ".safetensors" else (
            "pickled weights (.bin, .pt) are not loaded, since unpickling runs code" if directory.suffix in PICKLE_SUFFIXES else "pass that folder"
        )
        raise AutoDecoError(f"heads {directory} is a file; heads are a folder holding config.json and model.safetensors: {hint}")
    if not directory.is_dir():
        raise AutoDecoError(f"heads directory {directory} does not exist; create one with `autodeco init` or pass the right path")
    if not config_path.is_file():
        raise AutoDecoError(f"{config_path} is missing; an AutoDeco heads dir holds config.json and model.safetensors")
    config = read_json_object(config_path, "write it again with save_pretrained (`autodeco init`)")
    if config.get("model_type") != "autodeco":
        raise AutoDecoError(
            f"{config_path} has model_type {config.get('model_type')!r}, not 'autodeco': this is a plain model, "
            "pass it as the base (--model) and the heads dir as --heads"
        )
    check_autodeco_fields(config, str(config_path))
    return config


def load_heads(directory: str | os.PathLike) -> AutoDecoHeads:
    """Just the heads of a heads-only or merged AutoDeco dir, or shipped heads by name (no base is loaded)."""
    directory = resolve_heads(directory)
    config = read_autodeco_config(directory)
    return _heads_from_tensors(_read_head_tensors(directory, _checkpoint_tensor_names(directory)), config, directory)


def _checkpoint_files(directory: Path) -> list[Path]:
    files = safetensors_files(directory)
    if not files:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (it holds {', '.join(pickles)}: pickled weights are not loaded, since unpickling runs code)" if pickles else ""
        raise AutoDecoError(
            f"{directory / WEIGHTS_NAME} is missing{found}; an AutoDeco heads dir holds config.json and model.safetensors, "
            "as `autodeco init` and `autodeco train` write them"
        )
    return files


def _checkpoint_tensor_names(directory: Path) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for file in _checkpoint_files(directory):
        with open_safetensors(file) as handle:
            names.update({name: file for name in handle.keys()})
    return names


def _read_head_tensors(directory: Path, tensor_names: dict[str, Path]) -> dict[str, torch.Tensor]:
    head_names = [n for n in tensor_names if not n.startswith(MERGED_PREFIX)]
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted({tensor_names[n] for n in head_names}):
        with open_safetensors(file) as handle:
            tensors.update({n: handle.get_tensor(n) for n in head_names if tensor_names[n] == file})
    return tensors


def _heads_from_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], directory: Path) -> AutoDecoHeads:
    return heads_from_tensors(
        tensors, str(directory), use_enhanced_features=config.get("use_enhanced_features", True),
        enable_temperature_head=config.get("enable_temperature_head", True), enable_top_p_head=config.get("enable_top_p_head", True),
    )


def _load_merged_base(
    directory: Path, config: dict[str, Any], head_names: set[str], *,
    dtype: torch.dtype | str, device: str | torch.device | None, trust_remote_code: bool,
) -> PreTrainedModel:
    """The base of a merged dir, from its ``llm.*`` tensors; transformers' load report is shown
    only when it reports more than the head tensors, which the base has no place for."""
    text_config = base_config(config, str(directory / CONFIG_NAME))
    try:
        with _load_report_held() as report:
            llm, info = AutoModelForCausalLM.from_pretrained(
                str(directory), config=text_config, dtype=dtype, trust_remote_code=trust_remote_code,
                key_mapping={"^" + MERGED_PREFIX.replace(".", r"\."): ""}, output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError) as error:
        _release(report)  # transformers' report names the tensors that did not fit
        raise AutoDecoError(
            f"cannot load the base stored in the merged checkpoint {directory} ({str(error).strip().splitlines()[0]}); "
            "its config.json and its llm.* tensors do not belong together: write the checkpoint again with save_merged"
        ) from error
    if set(info["unexpected_keys"]) - head_names or info["missing_keys"] or info["mismatched_keys"]:
        _release(report)
    llm.eval()
    return llm.to(device) if device is not None else llm


_TRANSFORMERS_LOAD_LOGGER = "transformers.modeling_utils"  # where transformers logs its LOAD REPORT


@contextmanager
def _load_report_held() -> Iterator[list[logging.LogRecord]]:
    """Hold back transformers' LOAD REPORT warnings (nothing else) logged inside the block; the
    caller logs them after all (:func:`_release`) when they report a real problem."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger = logging.getLogger(_TRANSFORMERS_LOAD_LOGGER)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _release(records: list[logging.LogRecord]) -> None:
    """Log held records as they would have been logged."""
    for record in records:
        logging.getLogger(record.name).handle(record)



# ---------------------------------------------------------------------- base features for training
def final_hidden_states(llm: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, H]``: the tensor the base feeds its LM head, at every position (the heads' input).

    The decoder's last hidden state (after the final norm; the released trainer reads the same
    tensor as ``hidden_states[-1]``), without running the vocabulary-sized LM head at all.
    """
    return llm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def logits_from_hidden(llm: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The base's logits for final hidden states: its LM head, then its logit soft-capping if any
    (Gemma 2). :func:`check_logits_from_hidden` verifies this against a full forward."""
    logits = llm.get_output_embeddings()(hidden)
    cap = getattr(llm.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def check_logits_from_hidden(llm: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Raise unless :func:`logits_from_hidden` reproduces the base's own forward on this batch."""
    expected = llm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    rebuilt = logits_from_hidden(llm, final_hidden_states(llm, input_ids, attention_mask))
    keep = attention_mask.bool()
    if not torch.allclose(rebuilt[keep].float(), expected[keep].float(), atol=1e-3, rtol=1e-3):
        raise AutoDecoError(
            f"{type(llm).__name__} post-processes its logits in a way autodeco does not reproduce from the hidden "
            "states, so the heads cannot be trained on it; please report the architecture"
        )


# `import autodeco` imports this module: from then on AutoConfig and AutoModelForCausalLM load AutoDeco dirs
AutoConfig.register(AutoDecoConfig.model_type, AutoDecoConfig, exist_ok=True)
AutoModelForCausalLM.register(AutoDecoConfig, AutoDecoModelForCausalLM, exist_ok=True)

__all__ = [
    "AutoDecoGenerateOutput", "AutoDecoModelForCausalLM", "AutoDecoOutput", "check_logits_from_hidden",
    "base_reference", "check_device", "released_config", "final_hidden_states", "load_base", "load_heads", "logits_from_hidden", "read_autodeco_config",
]
