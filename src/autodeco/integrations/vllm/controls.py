"""The released request semantics on vLLM, per request, through ``SamplingParams.extra_args``.

A request's standard fields act on the AutoDeco distribution that ``compute_logits`` returns
(see the README, "Serving on vLLM"). The released serving code instead treats the user's values
as multipliers on the learned ones, and this logits processor gives exactly that: a request with

    extra_args={"autodeco": {"temperature_scale": 0.5, "top_p_scale": 1.0, "t_min": 0, "t_max": 2, "p_min": 0, "p_max": 1}}

(any subset; over HTTP, ``"vllm_xargs": {"autodeco": ...}`` is not nested, so the flat keys
``autodeco_temperature_scale`` ... are read too) samples from ``top_p_probs(l, T', P')`` with
``T' = clamp(T * temperature_scale, t_min, t_max)`` (scale 0: greedy) and
``P' = clamp(clamp(P * top_p_scale, 0, 1), p_min, p_max)``, as :func:`autodeco.sampling.apply_user_controls`
defines them; ``{"decoding": "static"}`` gives the base's own logits, so vLLM's temperature,
top-p, top-k and min-p act as on the plain base. Such requests must leave vLLM's own sampling
fields neutral (temperature 1, top_p 1, no top_k or min_p) unless static.

vLLM installs the processor from the ``vllm.logits_processors`` entry point in every engine; for
models other than AutoDeco it does nothing. vLLM runs no custom logits processor under
speculative decoding: there these controls have no effect (the standard fields still work).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams as VLLMSamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from autodeco.errors import AutoDecoError
from autodeco.sampling import SamplingParams, apply_user_controls, nucleus_logits

KEY = "autodeco"
CONTROL_FIELDS = ("temperature_scale", "top_p_scale", "t_min", "t_max", "p_min", "p_max")


def request_controls(params: VLLMSamplingParams) -> SamplingParams | None:
    """The AutoDeco controls a vLLM request carries in ``extra_args`` (checked), or None."""
    extra = params.extra_args or {}
    fields: dict[str, Any] = dict(extra.get(KEY) or {})
    fields.update({k[len(KEY) + 1:]: v for k, v in extra.items() if k.startswith(KEY + "_")})
    if not fields:
        return None
    known = set(CONTROL_FIELDS) | {"decoding"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise AutoDecoError(f"unknown autodeco controls {unknown}; use {sorted(known)}")
    decoding = fields.pop("decoding", "autodeco")
    if decoding not in ("autodeco", "static"):
        raise AutoDecoError(f"autodeco decoding={decoding!r} is unknown here; use 'autodeco' (learned T and P) or 'static' (the request's own fields)")
    if decoding == "static":
        if fields:
            raise AutoDecoError(f"autodeco controls {sorted(fields)} act on learned values; with decoding 'static' set temperature/top_p instead")
        return SamplingParams(decoding="static")
    neutral = params.temperature == 1.0 and params.top_p == 1.0 and params.top_k in (0, -1, None) and not params.min_p
    if not neutral:
        raise AutoDecoError(
            "a request with autodeco controls must leave temperature=1, top_p=1 and top_k/min_p unset: "
            "the controls already scale and bound the learned T and P (or pass decoding 'static')"
        )
    try:
        return SamplingParams(**{k: float(v) for k, v in fields.items()})
    except (TypeError, ValueError) as error:
        raise AutoDecoError(f"bad autodeco controls {fields}: {error}") from error


class AutoDecoControls(LogitsProcessor):
    """Rebuilds the rows of requests with controls from the model's last learned step."""

    @classmethod
    def validate_params(cls, sampling_params: VLLMSamplingParams) -> None:
        request_controls(sampling_params)  # AutoDecoError is a ValueError: vLLM answers 400

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        from autodeco.integrations.vllm import ARCHITECTURE

        architectures = vllm_config.model_config.architectures if vllm_config.model_config else []
        self.serves_autodeco = ARCHITECTURE in (architectures or [])
        self.rows: dict[int, SamplingParams] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # temperature_scale 0 and bounds change what greedy rows take: run before vLLM's own steps

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.serves_autodeco:
            process_dict_updates(self.rows, batch_update, lambda params, _prompt, _output: request_controls(params))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        from autodeco.integrations.vllm.model import current_model

        step = current_model().last_step
        rows = torch.tensor(sorted(self.rows), device=logits.device)
        controls = [self.rows[i] for i in sorted(self.rows)]
        static = torch.tensor([c.decoding == "static" for c in controls], device=logits.device)

        def column(name: str) -> torch.Tensor:
            return torch.tensor([getattr(c, name) for c in controls], dtype=torch.float32, device=logits.device)

        temperature, top_p = apply_user_controls(step.temperature[rows], step.top_p[rows], *(column(n) for n in CONTROL_FIELDS))
        learned = nucleus_logits(step.logits[rows], temperature, top_p)
        logits[rows] = torch.where(static.unsqueeze(-1), step.logits[rows].float(), learned)
        return logits


__all__ = ["AutoDecoControls", "request_controls"]
