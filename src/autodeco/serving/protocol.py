"""The OpenAI wire format: request bodies (pydantic) and response / stream-chunk dictionaries.

Fields follow the OpenAI API; ``temperature`` and ``top_p`` follow the released AutoDeco serving
semantics: with ``decoding="autodeco"`` (the default) they multiply the learned per-token values
(temperature 0 is greedy); with ``decoding="static"`` they are the usual constants. Every choice
carries an extension field ``autodeco``: the temperature and top-p used for each of its tokens.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autodeco.engine import TokenTrace
from autodeco.sampling import SamplingParams

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


class GenerationRequest(BaseModel):
    """Fields shared by both endpoints. Unknown fields are ignored, as SDKs send extras."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    decoding: Literal["autodeco", "static"] = "autodeco"
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise ValueError(f"give at most {MAX_STOP_STRINGS} non-empty stop strings")
        return stops

    def sampling_params(self, max_new_tokens: int) -> list[SamplingParams]:
        """One :class:`SamplingParams` per choice; choice i of a seeded request uses seed + i."""
        if self.decoding == "autodeco":
            mode = dict(temperature_scale=self.temperature, top_p_scale=self.top_p)
        elif self.temperature == 0:
            mode = dict(decoding="greedy")
        else:
            mode = dict(decoding="static", temperature=self.temperature, top_p=min(self.top_p, 1.0))
        return [
            SamplingParams(**mode, max_new_tokens=max_new_tokens, stop=tuple(self.stop or ()), seed=None if self.seed is None else (self.seed + i) % 2**63)
            for i in range(self.n)
        ]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[int]:
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("send one prompt per request (or use n for several completions)")
            value = value[0]
        if not value or (isinstance(value, str) and not value.strip()):
            raise ValueError("the prompt is empty")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text (text parts of a multi-part message, joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages is empty; send at least one message")
        return value


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def extension(tokens: list[TokenTrace]) -> dict[str, list[float]]:
    """The per-token temperature and top-p of a choice (the ``autodeco`` extension field)."""
    return {"temperature": [t.temperature for t in tokens], "top_p": [t.top_p for t in tokens]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(tokens: list[TokenTrace], piece: Any, offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for these tokens, text offsets from ``offset``."""
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{piece(i): lp for i, lp in t.top_logprobs} for t in tokens],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: list[TokenTrace], piece: Any) -> dict[str, Any]:
    """The chat ``logprobs`` object for these tokens."""

    def entry(text: str, logprob: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(piece(i), lp) for i, lp in t.top_logprobs]} for t in tokens]}


def envelope(kind: str, request_id: str, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The object around choices: id, object kind, creation time, model."""
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}
