"""AutoDeco inside transformers' own ``generate()``: the learned T and P enter as a logits processor.

While a ``generate()`` call runs, :class:`AutoDecoModelForCausalLM`'s forward keeps the heads'
T and P at the last position in a :class:`GenerationTrace`. :class:`AutoDecoLogitsProcessor`
reads them, applies the user controls (``temperature`` and ``top_p`` multiply the learned
values, ``top_k`` cuts before the nucleus) and returns :func:`autodeco.sampling.nucleus_logits`:
logits / T with every token outside the nucleus at -inf. Hugging Face's multinomial sampling then
draws from exactly :func:`autodeco.sampling.top_p_probs` at the learned T and P. Greedy decoding
(``do_sample=False``) is the base's own: the argmax of the processed logits. Processors that change the logits (penalties, bad words, min length,
the caller's ``logits_processor``) run before it, so the nucleus is found on what they leave;
the warpers that cut a distribution (min-p, typical, epsilon, eta, top-h) run after it, on
AutoDeco's distribution. Hugging Face's own temperature, top-k and top-p warpers never run: they
would apply a second time.

Every :class:`transformers.GenerationConfig` field either works as it does for the base model or
is refused (:data:`REFUSED_FIELDS`, with the reason): nothing is silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteriaList
from transformers.generation.configuration_utils import GenerationMode

from autodeco.errors import AutoDecoError
from autodeco.sampling import apply_user_controls, nucleus_logits

_BEAMS = "it only applies to beam search, and AutoDeco samples one sequence per row (num_beams=1); drop it"
_ASSIST = (
    "assisted generation here is autodeco's exact speculative decoding (assistant_model= or "
    "prompt_lookup_num_tokens=, num_assistant_tokens=); drop it"
)
# GenerationConfig fields with no sound meaning under learned T and P, and why. A field not
# named here works as it does for the base model (tests/test_hf_generate.py walks them all).
REFUSED_FIELDS: dict[str, str] = {
    "num_beams": _BEAMS,
    "num_beam_groups": _BEAMS,
    "diversity_penalty": _BEAMS,
    "length_penalty": _BEAMS,
    "early_stopping": _BEAMS,
    "constraints": _BEAMS,
    "force_words_ids": _BEAMS + " (bad_words_ids works)",
    "low_memory": _BEAMS,
    "penalty_alpha": "contrastive search picks tokens by a degeneration penalty, not by sampling at the learned T and P; drop it",
    "dola_layers": "DoLa contrasts the logits of early layers, which the heads never see; drop it",
    "guidance_scale": "classifier-free guidance runs a second, unconditional forward whose T and P would replace the prompt's; drop it",
    "decoder_start_token_id": "it applies to encoder-decoder models only; drop it",
    "continuous_batching_config": "batched serving is `autodeco serve` (or autodeco.generate for a list of prompts); drop it",
    "is_assistant": _ASSIST,
    "num_assistant_tokens": _ASSIST,
    "use_mtp": _ASSIST,
    "speculation_type": _ASSIST,
    "num_assistant_tokens_schedule": _ASSIST,
    "assistant_confidence_threshold": _ASSIST,
    "assistant_early_exit": _ASSIST,
    "assistant_lookbehind": _ASSIST,
    "target_lookbehind": _ASSIST,
    "assistant_ensemble_weight": _ASSIST,
    "max_matching_ngram_size": _ASSIST,
}
# generate() arguments outside GenerationConfig that are refused the same way.
REFUSED_ARGUMENTS = {
    "custom_generate": "a custom decoding loop would bypass the learned T and P; use the default loop",
    "synced_gpus": "multi-GPU synced generation is not supported; drop it",
    "negative_prompt_ids": "it applies to classifier-free guidance (guidance_scale), which AutoDeco refuses; drop it",
    "negative_prompt_attention_mask": "it applies to classifier-free guidance (guidance_scale), which AutoDeco refuses; drop it",
}
# Fields exact assisted generation (autodeco's speculative decoding) honours; any other one
# changed from the model's default is refused on that route.
SPECULATIVE_FIELDS = frozenset({
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "top_k", "min_p", "eos_token_id",
    "pad_token_id", "bos_token_id", "return_dict_in_generate", "num_assistant_tokens", "prompt_lookup_num_tokens",
})
SAMPLING_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)


def autodeco_generation_config(base: GenerationConfig) -> GenerationConfig:
    """The model's default generation config: the base's special tokens and max length, and the
    released AutoDeco semantics (sample; temperature and top_p multipliers of 1; no top-k). The
    base's own sampling defaults (Gemma ships top_k 64, top_p 0.95) are what the heads replace."""
    return GenerationConfig(
        bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
        max_length=base.max_length, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
    )


def changed_fields(config: GenerationConfig, reference: GenerationConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from ``reference`` (both fully resolved configs)."""
    ours, theirs = config.to_dict(), reference.to_dict()
    return {k: v for k, v in ours.items() if not k.startswith("_") and k != "transformers_version" and v != theirs.get(k)}


def check_generation_config(config: GenerationConfig, mode: GenerationMode, reference: GenerationConfig) -> None:
    """Raise :class:`AutoDecoError` for a generation mode other than greedy or sampling, or a
    field of :data:`REFUSED_FIELDS` set to anything but the default."""
    refused = sorted(set(changed_fields(config, reference)) & set(REFUSED_FIELDS))
    if refused:
        name = refused[0]
        raise AutoDecoError(f"generate() with AutoDeco does not support {name}={getattr(config, name)!r}: {REFUSED_FIELDS[name]}")
    if mode not in SAMPLING_MODES:
        raise AutoDecoError(f"generate() with AutoDeco does not support {mode.value}; it samples (or, with do_sample=False, takes the argmax)")


def check_speculative_config(config: GenerationConfig, reference: GenerationConfig) -> None:
    """Raise :class:`AutoDecoError` for any field exact assisted generation does not honour."""
    unsupported = sorted(set(changed_fields(config, reference)) - SPECULATIVE_FIELDS)
    if unsupported:
        raise AutoDecoError(
            f"assisted generation (exact speculative decoding) does not support {unsupported}; it honours "
            f"{sorted(SPECULATIVE_FIELDS)}: drop the others, or the assistant"
        )


@dataclass
class GenerationTrace:
    """The state one ``generate()`` call shares between the model's forward, the processor and
    the stopping criteria: the heads' values at the last position of the latest forward, and
    per step the T and P used and which rows finished."""

    wants_probs: bool = False  # the forward returns the heads' softmax for the processor to reuse
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None
    temperatures: list[torch.Tensor] = field(default_factory=list)
    top_ps: list[torch.Tensor] = field(default_factory=list)
    done: list[torch.Tensor] = field(default_factory=list)

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The latest forward's (T, P, probs, probs_top_ids) at its last position, used once."""
        if self.last is None:
            raise AutoDecoError("the AutoDeco logits processor ran without a forward of the AutoDeco model before it; use it only inside its generate()")
        last, self.last = self.last, None
        return last

    def per_token(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(temperatures, top_ps) ``[B, steps]`` of the first ``steps`` steps; 0 once a row had finished."""
        batch = self.temperatures[0].shape[0] if self.temperatures else 0
        if steps == 0:
            return torch.zeros(batch, 0), torch.zeros(batch, 0)
        temperatures = torch.stack(self.temperatures[:steps], dim=-1).float()
        top_ps = torch.stack(self.top_ps[:steps], dim=-1).float()
        done = torch.stack(self.done[:steps], dim=-1).to(temperatures.device)
        finished_before = torch.cat([torch.zeros_like(done[:, :1]), done[:, :-1].cummax(dim=-1).values], dim=-1)
        return temperatures.masked_fill(finished_before, 0.0).cpu(), top_ps.masked_fill(finished_before, 0.0).cpu()


class AutoDecoLogitsProcessor(LogitsProcessor):
    """Hugging Face's extension point for AutoDeco: the scores become :func:`nucleus_logits` at
    the learned T and P (times ``temperature_scale`` and ``top_p_scale``; scale 0 is greedy),
    after a ``top_k`` cut (0: off). ``reuse_probs``: the scores are the raw logits at the
    heads' own T, so the softmax the top-p head computed is reused (no second pass over the
    vocabulary). ``greedy_search`` (``do_sample=False``): the scores pass unchanged, as for the
    base, and T is recorded as 0."""

    def __init__(
        self, trace: GenerationTrace, temperature_scale: float, top_p_scale: float, top_k: int, reuse_probs: bool, greedy_search: bool = False
    ) -> None:
        self.trace = trace
        self.greedy_search = greedy_search
        self.temperature_scale = 0.0 if greedy_search else temperature_scale
        self.top_p_scale = top_p_scale
        self.top_k = top_k
        self.reuse_probs = reuse_probs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        learned_t, learned_p, probs, probs_top_ids = self.trace.take()
        temperature, top_p = apply_user_controls(learned_t.float(), learned_p.float(), self.temperature_scale, self.top_p_scale)
        self.trace.temperatures.append(temperature)
        self.trace.top_ps.append(top_p)
        if self.greedy_search:  # the argmax of the scores as they are: greedy decoding is the base's, watermark and all
            return scores
        if self.top_k and self.top_k < scores.shape[-1]:
            # ties with the k-th score stay, as in autodeco.sampling
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        reuse = self.reuse_probs and probs is not None
        return nucleus_logits(scores, temperature, top_p, probs=probs if reuse else None, probs_top_ids=probs_top_ids if reuse else None)


class RecordingStoppingCriteria(StoppingCriteriaList):
    """Hugging Face's stopping criteria, noting which rows each step finished (so that the T and P
    returned are 0 after a row's end, as the sequences are padded there)."""

    def __init__(self, criteria: StoppingCriteriaList, trace: GenerationTrace) -> None:
        super().__init__(criteria)
        self.trace = trace

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs: Any) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)
        self.trace.done.append(done)
        return done
