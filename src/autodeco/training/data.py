"""Training data: JSONL records -> token ids with the completion marked.

Two record shapes, one per line:

- ``{"prompt": "...", "completion": "..."}``: the prompt is tokenised with the tokenizer's special
  tokens (BOS), the completion after it without, and EOS is appended unless already there;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: the last turn must be the assistant's and
  is the completion; the tokenizer's chat template renders the rest as the prompt (with the
  generation prompt) and the whole conversation, whose extra text is the completion;
- ``{"prompt_ids": [...], "completion_ids": [...]}`` (text fields optional): token ids used as they
  are. Self-generated data should keep them: re-tokenising sampled text can change the tokens
  (BPE has many spellings of one string), and the heads must learn from what was really sampled.

The loss covers completion tokens only. An example longer than ``max_length`` is truncated (its
completion cut at the end) or dropped, by option, and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from autodeco.configuration import json_kind
from autodeco.errors import AutoDecoError
from autodeco.io import read_jsonl

Overflow = Literal["truncate", "drop"]


@dataclass(frozen=True)
class Example:
    """One training sequence: ``input_ids`` and where the completion starts (``prompt_length``)."""

    input_ids: tuple[int, ...]
    prompt_length: int

    @property
    def completion_length(self) -> int:
        return len(self.input_ids) - self.prompt_length

    def targets(self) -> torch.Tensor:
        """The completion tokens, which the positions ``prompt_length - 1 ...`` predict."""
        return torch.tensor(self.input_ids[self.prompt_length :], dtype=torch.long)


@dataclass
class DataStats:
    """What loading did: records read, examples kept, truncated and dropped, completion tokens."""

    path: str
    records: int = 0
    truncated: int = 0
    dropped: int = 0
    completion_tokens: int = 0
    examples: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.drop_reasons.items())
        return (
            f"{self.path}: {self.records} records -> {self.examples} examples, {self.completion_tokens} completion tokens "
            f"({self.truncated} truncated, {self.dropped} dropped{': ' + reasons if reasons else ''})"
        )


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for each line of a JSONL file; a missing file, a folder, bytes that
    are not UTF-8 or a line that is not a JSON object is reported by file and line before any work."""
    records = read_jsonl(Path(path), "training data", "pass a JSONL file with --data")
    for number, record in records:
        if not isinstance(record, dict):
            raise AutoDecoError(f"{path}:{number}: expected a JSON object, got {json_kind(record)}")
    return records


def _prompt_and_completion(record: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, str, bool]:
    """(prompt text, completion text, whether the prompt text still needs the tokenizer's special tokens)."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise AutoDecoError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        if messages[-1]["role"] != "assistant":
            raise AutoDecoError(f"{where}: the last message is the completion and must have role 'assistant', not {messages[-1]['role']!r}")
        if not getattr(tokenizer, "chat_template", None):
            raise AutoDecoError(f"{where}: a 'messages' record needs a tokenizer with a chat template; use prompt/completion records for this base")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise AutoDecoError(f"{where}: the chat template does not render the conversation as prompt + answer; use prompt/completion records")
        return prompt, full[len(prompt) :], False
    missing = [name for name in ("prompt", "completion") if not isinstance(record.get(name), str)]
    if missing:
        raise AutoDecoError(f"{where}: missing or non-string field(s) {missing}; each record needs 'prompt' and 'completion' strings, or 'messages'")
    return record["prompt"], record["completion"], True


def _token_ids(record: dict[str, Any], where: str) -> Example:
    ids = {name: record.get(name) for name in ("prompt_ids", "completion_ids")}
    for name, value in ids.items():
        if not isinstance(value, list):
            raise AutoDecoError(f"{where}: {name!r} must be a list of token ids (non-negative integers), got {json_kind(value)}")
        for position, token in enumerate(value):
            # bool is an int in Python: without the explicit check, true would train as token 1
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise AutoDecoError(
                    f"{where}: {name}[{position}] is {json.dumps(token)}, not a token id; token ids are non-negative integers"
                )
    if not ids["prompt_ids"]:
        raise AutoDecoError(f"{where}: 'prompt_ids' is empty; the first completion token needs a position to be predicted from")
    return Example(tuple(ids["prompt_ids"]) + tuple(ids["completion_ids"]), len(ids["prompt_ids"]))


def tokenize_record(record: dict[str, Any], tokenizer: Any, where: str = "record") -> Example:
    """One record -> an :class:`Example` (not yet length-limited)."""
    if "completion_ids" in record or "prompt_ids" in record:
        return _token_ids(record, where)
    prompt, completion, add_special = _prompt_and_completion(record, tokenizer, where)
    prompt_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_special and eos is not None and completion_ids and completion_ids[-1] != eos:
        completion_ids = completion_ids + [eos]  # the heads also learn how to end
    return Example(tuple(prompt_ids) + tuple(completion_ids), len(prompt_ids))


def prepare_examples(
    records: list[tuple[str, dict[str, Any]]], tokenizer: Any, max_length: int, overflow: Overflow, stats: DataStats
) -> list[Example | None]:
    """Tokenise and length-limit records, each given with where it came from (for errors);
    None for a record dropped (counted in ``stats``)."""
    prepared: list[Example | None] = []

    def drop(reason: str) -> None:
        stats.dropped += 1
        stats.drop_reasons[reason] = stats.drop_reasons.get(reason, 0) + 1
        prepared.append(None)

    for where, record in records:
        stats.records += 1
        example = tokenize_record(record, tokenizer, where)
        if max(example.input_ids) >= len(tokenizer):
            raise AutoDecoError(f"{where}: token id {max(example.input_ids)} is outside the tokenizer's vocabulary of {len(tokenizer)}")
        if example.completion_length == 0:
            drop("with an empty completion")
            continue
        if len(example.input_ids) > max_length:
            if overflow == "drop":
                drop(f"longer than {max_length} tokens")
                continue
            if example.prompt_length >= max_length:
                drop(f"with a prompt of {max_length}+ tokens")
                continue
            example = Example(example.input_ids[:max_length], example.prompt_length)
            stats.truncated += 1
        prepared.append(example)
        stats.completion_tokens += example.completion_length
    stats.examples += sum(e is not None for e in prepared)
    return prepared


def check_limits(max_length: int, overflow: str) -> None:
    """Raise a named error for a length limit or overflow policy that cannot work."""
    if max_length < 2:
        raise AutoDecoError(f"--max-length must be at least 2 tokens, got {max_length}")
    if overflow not in ("truncate", "drop"):
        raise AutoDecoError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")


def load_examples(path: str | Path, tokenizer: Any, max_length: int, overflow: Overflow = "truncate") -> tuple[list[Example], DataStats]:
    """Read, tokenise and length-limit a JSONL training file (token ids must fit the vocabulary)."""
    check_limits(max_length, overflow)
    stats = DataStats(str(path))
    prepared = prepare_examples([(f"{path}:{number}", record) for number, record in read_records(path)], tokenizer, max_length, overflow, stats)
    examples = [e for e in prepared if e is not None]
    if not examples:
        raise AutoDecoError(f"{stats.summary()}: nothing left to train on; check the file or raise --max-length")
    return examples, stats


def collate(examples: list[Example], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both ``[B, L]``."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        mask[row, : len(example.input_ids)] = 1
    return ids, mask
