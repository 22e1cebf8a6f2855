"""Text in, text out: prompts -> tokens -> :mod:`autodeco.decoding` -> completions or a stream.

Adds what needs the tokenizer: chat templates, incremental detokenisation, stop strings (never
streamed past: text that could still become a stop string is held back), and per-completion
traces of the temperature and top-p used for every token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from autodeco.decoding import RowRequest, RunningBatch, TokenEvent
from autodeco.errors import AutoDecoError
from autodeco.sampling import SamplingParams
from autodeco.speculative import Speculation

Prompt = str | list[dict[str, str]]  # plain text, or chat messages [{"role": ..., "content": ...}]


@dataclass
class TokenTrace:
    """One generated token with the temperature and top-p that sampled it."""

    token_id: int
    text: str
    temperature: float
    top_p: float
    logprob: float | None = None  # under the model's own softmax, when asked for
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), most likely first


@dataclass
class Completion:
    """A finished answer: text (stop string and EOS removed), its tokens with T and P, and why it
    ended: "stop" (EOS or a stop string) or "length" (max_new_tokens or the context limit).
    ``stop_token_id`` is the sampled token that ended it when that token is not part of the
    answer (EOS, or a token wholly inside the stop string, such as a newline)."""

    text: str
    tokens: list[TokenTrace]
    finish_reason: str
    prompt_tokens: int
    stop_token_id: int | None = None

    def add(self, event: "StreamEvent") -> None:
        """Fold one streamed event of this answer into it."""
        self.text += event.text
        self.tokens.extend(event.tokens)
        self.finish_reason = event.finish_reason or self.finish_reason
        self.prompt_tokens = event.prompt_tokens
        if event.stop_token_id is not None:
            self.stop_token_id = event.stop_token_id

    @property
    def mean_temperature(self) -> float:
        return sum(self.temperatures) / len(self.tokens) if self.tokens else 0.0

    @property
    def mean_top_p(self) -> float:
        return sum(self.top_ps) / len(self.tokens) if self.tokens else 0.0

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def temperatures(self) -> list[float]:
        return [t.temperature for t in self.tokens]

    @property
    def top_ps(self) -> list[float]:
        return [t.top_p for t in self.tokens]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: text, finish_reason and each token with its T and P."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "tokens": [{"token": t.text, "token_id": t.token_id, "temperature": t.temperature, "top_p": t.top_p} for t in self.tokens],
        }


@dataclass
class StreamEvent:
    """New text for prompt ``index``: the tokens sampled this step (usually one), on the last
    event of that prompt its finish reason, and the prompt's length in tokens."""

    index: int
    text: str
    tokens: list[TokenTrace]
    finish_reason: str | None
    prompt_tokens: int
    stop_token_id: int | None = None


@dataclass
class RowText:
    """Incremental detokenisation of one row: each token's own text, stop strings, hold-back.

    Each step decodes only the new tokens plus a few tokens of left context (the method of
    vLLM's and Hugging Face's streamers), so a long answer is not re-decoded at every token.
    """

    tokenizer: PreTrainedTokenizerBase
    stop: tuple[str, ...]
    eos_ids: set[int]
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # left context for decoding the new tokens
    read_offset: int = 0  # ids before this are in `decoded`
    decoded: str = ""  # everything decoded so far, stop string included
    answer_end: int | None = None  # where the first stop string starts, once one is seen
    emitted: int = 0  # characters of the answer already streamed
    last_piece: str = ""  # the text the last token added to the answer

    @property
    def stopped(self) -> bool:
        return self.answer_end is not None

    @property
    def text(self) -> str:
        """The answer: decoded text up to the first stop string."""
        return self.decoded if self.answer_end is None else self.decoded[: self.answer_end]

    def add(self, token_id: int) -> None:
        """Append a token and decode it; finds stop strings that the new text completes."""
        self.last_piece = ""
        if token_id in self.eos_ids:
            return
        self.ids.append(token_id)
        previous = len(self.decoded)
        self.decoded += self._new_text()
        for stop in self.stop:
            start = self.decoded.find(stop, max(0, previous - len(stop) + 1))
            if start >= 0 and (self.answer_end is None or start < self.answer_end):
                self.answer_end = start
        self.last_piece = self.text[previous:]

    def _new_text(self) -> str:
        """Text of the tokens not yet in ``decoded``. Empty while they end inside a UTF-8
        character (it decodes as U+FFFD): the token that completes it gets the character."""
        context = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(text) <= len(context) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(context):]

    def take(self, index: int, token: TokenEvent, prompt_tokens: int) -> tuple["StreamEvent | None", str | None]:
        """:meth:`add` a running batch's ``token`` -> (its event, or None when there is nothing to
        report yet (text held back); the reason the row ends: the batch's, or "stop" at a stop
        string). EOS, and a token whose text lies wholly inside a stop string, are not part of the
        answer."""
        self.add(token.token)
        reason = "stop" if self.stopped else token.finish_reason
        keep = token.token not in self.eos_ids and not (self.stopped and reason == "stop" and not self.last_piece)
        traces = [TokenTrace(token.token, self.last_piece, token.temperature, token.top_p, token.logprob, token.top_logprobs)] if keep else []
        text = self.flushable(final=reason is not None)
        if not (text or traces or reason is not None):
            return None, reason
        return StreamEvent(index, text, traces, reason, prompt_tokens, None if keep or reason != "stop" else token.token), reason

    def flushable(self, final: bool) -> str:
        """Answer text safe to stream now: all of it at the end; otherwise hold back any tail
        that could still grow into a stop string."""
        text = self.text
        hold = 0
        if not final:
            for stop in self.stop:
                for size in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:size]):
                        hold = max(hold, size)
                        break
        end = max(len(text) - hold, self.emitted)
        chunk, self.emitted = text[self.emitted:end], end
        return chunk


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat: bool) -> list[list[int]]:
    """Token ids per prompt; with ``chat`` (or message lists) through the tokenizer's chat template."""
    encoded = []
    for index, prompt in enumerate(prompts):
        is_messages = isinstance(prompt, list)
        if (is_messages and not prompt) or (not is_messages and not str(prompt).strip()):
            raise AutoDecoError(f"prompt {index} is empty; give every prompt some text")
        if chat or is_messages:
            if not getattr(tokenizer, "chat_template", None):
                raise AutoDecoError("this tokenizer has no chat template; drop --chat/chat=True and send plain text prompts")
            messages = prompt if is_messages else [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            encoded.append(tokenizer(text, add_special_tokens=False).input_ids)
        else:
            encoded.append(tokenizer(prompt).input_ids)
    return encoded


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends an answer: the generation config's, the model config's, the tokenizer's."""
    ids: set[int] = set()
    for source in (model.llm.generation_config.eos_token_id, model.config.get_text_config().eos_token_id, tokenizer.eos_token_id):
        if source is not None:
            ids.update([source] if isinstance(source, int) else source)
    return ids


def stream(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompt | Sequence[Prompt],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    chat: bool = False,
    speculation: Speculation | None = None,
) -> Iterator[StreamEvent]:
    """Generate for all prompts in one batch, yielding text as it is decoded.

    ``params`` is one :class:`SamplingParams` for every prompt or one per prompt. With
    ``speculation`` (:func:`autodeco.speculative.make_speculation`), drafts are verified by the
    model: the same tokens for a seeded request, fewer forwards; ``speculation.stats`` counts them.
    """
    prompt_list = _as_prompt_list(prompts)
    if not prompt_list:
        raise AutoDecoError("no prompts given")
    params = params or SamplingParams()
    param_list = [params] * len(prompt_list) if isinstance(params, SamplingParams) else list(params)
    if len(param_list) != len(prompt_list):
        raise AutoDecoError(f"{len(param_list)} sampling params for {len(prompt_list)} prompts; give one, or one per prompt")
    token_ids = encode_prompts(tokenizer, prompt_list, chat)
    eos = eos_ids(model, tokenizer)
    rows = [RowText(tokenizer, p.stop, eos) for p in param_list]
    batch = RunningBatch(model, eos, speculation)
    for token in batch.run([RowRequest(i, ids, p) for i, (ids, p) in enumerate(zip(token_ids, param_list))]):
        row = rows[token.key]
        if row.stopped:  # a token past the stop string, from the same speculative step
            continue
        event, reason = row.take(token.key, token, len(token_ids[token.key]))
        if reason is not None and token.finish_reason is None:
            batch.leave({token.key})
        if event is not None:
            yield event


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (text or a message list) or many -> a list of prompts."""
    is_messages = isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], dict)
    return [prompts] if isinstance(prompts, str) or is_messages else list(prompts)


def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompt | Sequence[Prompt],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    chat: bool = False,
    speculation: Speculation | None = None,
) -> list[Completion]:
    """Generate for all prompts in one batch; one :class:`Completion` per prompt, in order
    (``speculation`` as in :func:`stream`)."""
    prompt_list = _as_prompt_list(prompts)
    completions = [Completion("", [], "", 0) for _ in prompt_list]
    for event in stream(model, tokenizer, prompt_list, params, chat=chat, speculation=speculation):
        completions[event.index].add(event)
    return completions
