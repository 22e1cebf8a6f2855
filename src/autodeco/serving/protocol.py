"""The OpenAI wire format: request bodies (pydantic) and response / stream-chunk dictionaries.

Fields follow the OpenAI API; ``temperature`` and ``top_p`` follow the released AutoDeco serving
semantics: with ``decoding="autodeco"`` (the default) they multiply the learned per-token values
(temperature 0 is greedy); with ``decoding="static"`` they are the usual constants. Every choice
carries an extension field ``autodeco``: the temperature and top-p used for each of its tokens.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator

from autodeco.engine import TokenTrace
from autodeco.sampling import SamplingParams

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens for completions


def _unicode(value: str) -> str:
    """``value`` if it encodes as UTF-8: JSON's ``\\ud800`` escape gives a lone surrogate, which the
    tokenizer and the JSON encoder of a reply cannot take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the text has a lone UTF-16 surrogate at character {error.start}; send valid Unicode") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_unicode)]


class _Strict(BaseModel):
    """Strict types (no "1.0" or true for a number, no "yes" for a boolean; an integer still does
    for a float, as JSON has one number type); unknown fields are ignored, as SDKs send extras."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationRequest(_Strict):
    """Fields shared by both endpoints."""

    model: Text | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stop: list[Text] = []
    seed: int | None = Field(None, ge=0, lt=2**63)
    decoding: Literal["autodeco", "static"] = "autodeco"
    stream_options: StreamOptions | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> list[Any]:
        stops = [value] if isinstance(value, str) else [] if value is None else value
        if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings")
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
            SamplingParams(**mode, max_new_tokens=max_new_tokens, stop=tuple(self.stop), seed=None if self.seed is None else (self.seed + i) % 2**63)
            for i in range(self.n)
        ]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def token_ask(self) -> tuple[int | None, int | None]:
        """(the max_tokens the request set, the default when it set none); None: the room left in
        the context. A default may be cut to fit the server's limits; a set value is refused."""
        raise NotImplementedError


class CompletionRequest(GenerationRequest):
    prompt: str | list[int]  # checked whole by _one_prompt
    max_tokens: int | None = Field(None, ge=1)  # unset: COMPLETION_MAX_TOKENS; null: up to the context
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        """One text or one list of token ids (a list of one text is taken as that text)."""
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            if len(value) != 1:
                raise ValueError("send one prompt per request (or use n for several completions)")
            value = value[0]
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("the prompt is empty")
            return _unicode(value)
        if isinstance(value, list) and value and all(type(t) is int for t in value):
            return value
        raise ValueError("prompt must be a string, a list of one string, or a non-empty list of token ids (integers)")

    def token_ask(self) -> tuple[int | None, int | None]:
        return (self.max_tokens, None) if "max_tokens" in self.model_fields_set else (None, COMPLETION_MAX_TOKENS)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        """The message's text: a string, or text parts (``{"type": "text", "text": ...}``) joined."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise ValueError('content must be a string or a list of text parts {"type": "text", "text": "..."}; this server reads text only')


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

    def token_ask(self) -> tuple[int | None, int | None]:
        return self.max_completion_tokens or self.max_tokens, None


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON. A message that quotes the request (a path, a model name) may hold a lone
    surrogate: it is escaped, as a reply must encode as UTF-8."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
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
