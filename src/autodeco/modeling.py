"""AutoDecoModelForCausalLM: any Hugging Face causal LM plus the two heads, in one forward pass.

Checkpoint formats (both as released, spec section 2):

- heads-only (PEFT-like): ``config.json`` (model_type "autodeco", the base's name and config) and
  ``model.safetensors`` with exactly the 8 head tensors; the base is loaded from its own path.
- merged: every base tensor renamed ``llm.<key>`` plus the 8 head tensors, possibly sharded with a
  ``model.safetensors.index.json``, and the autodeco ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.utils import ModelOutput

from autodeco.configuration import MERGED_PREFIX, base_config, check_autodeco_fields
from autodeco.decoding import decode_to_tensors
from autodeco.errors import AutoDecoError
from autodeco.heads import AutoDecoHeads, SoftmaxOut, heads_from_tensors
from autodeco.io import INDEX_NAME, atomic_save_tensors, atomic_write_text, open_safetensors, read_json_object, safetensors_files
from autodeco.kv_cache import forward_with_cache
from autodeco.models import MODEL_ALIASES, resolve_heads, resolve_model
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
    its largest entries, descending."""

    logits: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    cache: Any = None
    probs: torch.Tensor | None = None
    probs_top_ids: torch.Tensor | None = None

    @property
    def past_key_values(self) -> Any:
        return self.cache


@dataclass
class AutoDecoGenerateOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns: the sequences (prompt and new
    tokens, padded after each row's end) and the T and P used for every new token."""

    sequences: torch.Tensor | None = None
    temperatures: torch.Tensor | None = None
    top_ps: torch.Tensor | None = None


class AutoDecoModelForCausalLM(nn.Module):
    """A frozen base causal LM (``self.llm``) and the AutoDeco heads (``self.heads``).

    The heads read the tensor the base feeds its LM head, captured by a forward hook, so every
    architecture works unchanged (final norms, logit soft-capping and all stay the base's own).
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        heads: AutoDecoHeads,
        base_name_or_path: str | None = None,
    ) -> None:
        super().__init__()
        hidden_size = base_hidden_size(llm.config)
        if heads.hidden_size != hidden_size:
            raise AutoDecoError(
                f"the heads expect hidden size {heads.hidden_size} but the base has hidden size {hidden_size}: "
                "these heads were trained for another base model; pass the base they were made for"
            )
        self.llm = llm
        self.heads = heads.to(device=llm.get_output_embeddings().weight.device)
        self.base_name_or_path = base_name_or_path or getattr(llm, "name_or_path", "") or ""
        self._lm_head_input: torch.Tensor | None = None
        llm.get_output_embeddings().register_forward_pre_hook(self._capture_lm_head_input)
        llm.requires_grad_(False)

    def _capture_lm_head_input(self, module: nn.Module, args: tuple) -> tuple:
        # Made contiguous: with frozen weights, torch's CPU matmul runs a [B, 1, H] slice of the
        # prefill's hidden states (logits_to_keep=1) as a bmm that copies the whole LM head per
        # row (7 s instead of 0.2 s for a batch-8 Gemma prefill).
        hidden = args[0].contiguous()
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
    ) -> "AutoDecoModelForCausalLM":
        """Load a heads-only dir (base from ``base_model_name_or_path`` unless ``base`` overrides
        it), a merged dir (``llm.*`` tensors; ``base`` must then be None), or heads shipped with
        the package by name (e.g. ``"gemma-3-270m"``)."""
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

    # ------------------------------------------------------------------ saving
    def autodeco_config(self) -> dict[str, Any]:
        """The released config.json: the base config's fields plus the autodeco fields."""
        base = self.llm.config.to_dict()
        hidden = self.heads.hidden_size
        return {
            **base,
            "model_type": "autodeco",
            "architectures": ["AutoDecoModelForCausalLM"],
            "base_model_name_or_path": self.base_name_or_path,
            "base_model_type": base["model_type"],
            "enable_temperature_head": self.heads.enable_temperature_head,
            "enable_top_p_head": self.heads.enable_top_p_head,
            "use_enhanced_features": self.heads.top_p_head.use_enhanced_features,
            "temperature_hidden_size": hidden,
            "top_p_hidden_size": hidden,
        }

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
    def config(self):
        """The base model's config (vocabulary, special tokens, context length ...)."""
        return self.llm.config

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
        from at the learned T.
        """
        if past_key_values is not None and cache is not None:
            raise AutoDecoError("pass the KV cache once, as cache= or past_key_values=, not both")
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
        if not compute_heads:
            return AutoDecoOutput(logits=out.logits, cache=out_cache)
        if hidden is None:
            raise AutoDecoError(f"{type(self.llm).__name__} did not call its output embedding; AutoDeco needs a causal LM head")
        softmax = SoftmaxOut.empty_for(out.logits) if return_probs and self.heads.computes_probabilities else None
        temperature, top_p = self.heads(hidden, out.logits, softmax)
        return AutoDecoOutput(
            logits=out.logits, temperature=temperature, top_p=top_p, cache=out_cache,
            probs=None if softmax is None else softmax.probs, probs_top_ids=None if softmax is None else softmax.top_ids,
        )

    # ------------------------------------------------------------------ Hugging Face style generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        generation_config: GenerationConfig | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
        return_dict_in_generate: bool | None = None,
        **unsupported: Any,
    ) -> torch.Tensor | AutoDecoGenerateOutput:
        """Drop-in for ``PreTrainedModel.generate`` that decodes with the learned T and P.

        ``temperature`` and ``top_p`` act as multipliers on the learned values (the released
        serving semantics: 1 and 1 mean pure AutoDeco); ``do_sample=False`` or ``temperature=0``
        is greedy. Returns the prompt plus new tokens, padded with ``pad_token_id`` after each
        row's end, as Hugging Face does; or, with ``return_dict_in_generate=True``, also the T
        and P used per new token. From ``generation_config`` (default: the base's) only
        max_new_tokens, eos/pad ids and return_dict_in_generate are read: its sampling settings
        are what the heads replace. Beam search and other search strategies are refused.
        Assisted generation is exact speculative decoding here: ``assistant_model=`` (its greedy
        drafts, ``num_assistant_tokens`` per step) or ``prompt_lookup_num_tokens=N`` (n-gram drafts).
        """
        config = generation_config or self.llm.generation_config
        speculation = _speculation(
            unsupported.pop("assistant_model", None), unsupported.pop("num_assistant_tokens", None), unsupported.pop("prompt_lookup_num_tokens", None)
        )
        ignored = {k: v for k, v in unsupported.items() if v not in (None, False, 1)}  # 1, False: the HF defaults
        if ignored:
            raise AutoDecoError(
                f"generate() does not support {sorted(ignored)}; AutoDeco samples one sequence per row "
                "(no beam search): use the arguments documented on AutoDecoModelForCausalLM.generate"
            )
        if input_ids is None:
            raise AutoDecoError("generate() needs input_ids (a [batch, length] tensor of token ids)")
        sample = do_sample if do_sample is not None else True
        scale_t = temperature if temperature is not None else 1.0
        params = SamplingParams(
            temperature_scale=scale_t if sample else 0.0,
            top_p_scale=top_p if top_p is not None else 1.0,
            top_k=top_k or 0,
            min_p=min_p or 0.0,
            max_new_tokens=max_new_tokens or config.max_new_tokens or 20,
            seed=seed,
        )
        eos = eos_token_id if eos_token_id is not None else config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        pad = pad_token_id if pad_token_id is not None else (config.pad_token_id if config.pad_token_id is not None else min(eos_ids, default=0))
        sequences, temperatures, top_ps = decode_to_tensors(self, input_ids, attention_mask, params, eos_ids, pad, speculation)
        return_dict = return_dict_in_generate if return_dict_in_generate is not None else config.return_dict_in_generate
        if return_dict:
            return AutoDecoGenerateOutput(sequences=sequences, temperatures=temperatures, top_ps=top_ps)
        return sequences


def _speculation(assistant_model: Any, num_assistant_tokens: int | None, prompt_lookup_num_tokens: int | None) -> Any:
    """Hugging Face's assisted-generation arguments as a :class:`autodeco.speculative.Speculation`
    (exact for any sampling: the drafts are greedy, see :mod:`autodeco.speculative`)."""
    if assistant_model is None and not prompt_lookup_num_tokens:
        return None
    from autodeco.speculative import DEFAULT_NUM_DRAFT_TOKENS, ModelDrafter, NgramDrafter, Speculation  # it builds on this module

    if assistant_model is not None:
        return Speculation(ModelDrafter(getattr(assistant_model, "llm", assistant_model)), num_assistant_tokens or DEFAULT_NUM_DRAFT_TOKENS)
    return Speculation(NgramDrafter(), prompt_lookup_num_tokens)


# ---------------------------------------------------------------------- loading helpers
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


__all__ = [
    "AutoDecoGenerateOutput", "AutoDecoModelForCausalLM", "AutoDecoOutput", "check_logits_from_hidden",
    "base_reference", "check_device", "final_hidden_states", "load_base", "load_heads", "logits_from_hidden", "read_autodeco_config",
]
