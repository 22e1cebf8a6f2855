"""Per-token T and P of a completion served by vLLM, recomputed exactly.

vLLM returns tokens and logprobs, not the T and P that sampled them. Both depend only on the
prefix (the heads read the hidden state of the position before each token), so one
teacher-forced pass over prompt + completion gives them exactly: :func:`learned_trace`.

``vllm serve`` gets the same as a route, ``POST /v1/autodeco/trace``, from the opt-in endpoint
plugin :class:`TraceEndpoint` (``VLLM_PLUGINS=autodeco,autodeco-trace``). It runs that pass with
autodeco's transformers model of the served checkpoint, loaded on first use in the API server
process (on CPU unless ``AUTODECO_TRACE_DEVICE`` says otherwise): right for small models and
for auditing, not a substitute for the engine at 100B+ parameters (see the README).
"""

import asyncio  # no `from __future__ import annotations`: FastAPI reads the route's annotations as objects

import os
from argparse import Namespace
from typing import Any

import torch

from autodeco.errors import AutoDecoError

ROUTE = "/v1/autodeco/trace"


@torch.no_grad()
def learned_trace(model: Any, prompt_ids: list[int], completion_ids: list[int]) -> list[dict[str, float | int]]:
    """``[{"token_id", "temperature", "top_p"}, ...]``: the learned values that sampled each
    completion token (before any request's scaling), from one teacher-forced forward of
    ``model`` (an :class:`autodeco.AutoDecoModelForCausalLM`)."""
    if not prompt_ids or not completion_ids:
        raise AutoDecoError("learned_trace needs a non-empty prompt and completion (token ids, e.g. from return_token_ids=True)")
    vocab = model.config.get_text_config().vocab_size
    if any(not 0 <= t < vocab for t in [*prompt_ids, *completion_ids]):
        raise AutoDecoError(f"token ids must lie in [0, {vocab}): the trace needs the ids the served model saw")
    ids = torch.tensor([[*prompt_ids, *completion_ids]], device=model.device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=len(completion_ids) + 1)
    temperature, top_p = out.temperature[0, :-1].tolist(), out.top_p[0, :-1].tolist()  # position t-1 sampled token t
    return [{"token_id": t, "temperature": tt, "top_p": pp} for t, tt, pp in zip(completion_ids, temperature, top_p)]


class TraceEndpoint:
    """The ``vllm.endpoint_plugins`` entry: ``POST /v1/autodeco/trace`` with
    ``{"prompt_token_ids": [...], "completion_token_ids": [...]}`` answers ``{"tokens": [...]}``
    as :func:`learned_trace` (ids as vLLM returns them with ``"return_token_ids": true``)."""

    name = "autodeco-trace"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self._model = None
        self._lock = asyncio.Lock()
        self._args: Namespace | None = None

    def attach_router(self, app) -> None:
        from fastapi import Request
        from fastapi.responses import JSONResponse

        @app.post(ROUTE)
        async def trace(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                prompt, completion = body.get("prompt_token_ids"), body.get("completion_token_ids")
                if not (_token_list(prompt) and _token_list(completion)):
                    raise AutoDecoError("give prompt_token_ids and completion_token_ids as non-empty lists of integers")
                model = await self._loaded()
                tokens = await asyncio.to_thread(learned_trace, model, prompt, completion)
            except (AutoDecoError, ValueError, AttributeError) as error:
                return JSONResponse({"error": {"message": str(error), "type": "invalid_request_error"}}, status_code=400)
            return JSONResponse({"tokens": tokens})

    async def init_state(self, engine_client, state, args: Namespace) -> None:
        self._args = args

    async def _loaded(self):
        async with self._lock:
            if self._model is None:
                from autodeco.modeling import AutoDecoModelForCausalLM

                args = self._args
                overrides = getattr(args, "hf_overrides", None)
                base = overrides.get("base_model_name_or_path") if isinstance(overrides, dict) else None
                device = os.environ.get("AUTODECO_TRACE_DEVICE", "cpu")
                self._model = await asyncio.to_thread(
                    AutoDecoModelForCausalLM.from_pretrained, args.model, base, dtype="auto", device=device
                )
            return self._model


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
