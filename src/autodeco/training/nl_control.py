"""Natural-language control of decoding: decoding commands added to prompts, and the ranking loss
that teaches the heads to follow them (the paper's third finding; its code was not released).

Three conditions: "high" (more diverse: T and P up), "low" (less diverse: T and P down) and
"deterministic" (T towards 0). The phrasings live here, in two disjoint lists: those trained on
and those held out to test that the heads follow commands they never saw.

A command goes where a user would write it: at the end of the last user turn for chat records, and
for plain prompts on its own line just before the line the answer continues (after the prompt
when the answer starts on a new line). The completion is never touched, so a commanded example
and its plain original share every completion position, which is what the ranking loss compares.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autodeco.errors import AutoDecoError
from autodeco.training.data import DataStats, Example, Overflow, check_limits, prepare_examples, read_records

CONDITIONS = ("high", "low", "deterministic")

PHRASINGS: dict[str, tuple[str, ...]] = {
    "high": (
        "Be creative and surprising in your answer.",
        "Give an imaginative, varied answer.",
        "Feel free to be playful and original.",
        "Answer with lots of variety and creativity.",
        "Surprise me with an unusual answer.",
        "Be as diverse and inventive as you can.",
    ),
    "low": (
        "Be precise and stick to the most likely answer.",
        "Answer carefully and conservatively.",
        "Keep your answer focused and predictable.",
        "Give a safe, standard answer.",
        "Be accurate rather than creative.",
        "Avoid anything unusual; be conventional.",
    ),
    "deterministic": (
        "Answer deterministically, with no randomness.",
        "Always give the single most likely answer.",
        "Be completely deterministic.",
        "Do not sample; pick the top choice every time.",
    ),
}

HELD_OUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "high": ("Let your imagination run wild.", "Write something unexpected and diverse."),
    "low": ("Stay conservative and exact.", "Play it safe and be exact."),
    "deterministic": ("Zero randomness, please.", "Respond the same way every time."),
}

DEFAULT_T_MARGIN = 0.15  # how far T must move, per token, for the ranking loss to be zero
DEFAULT_P_MARGIN = 0.5  # the same for P, on the logit scale (P sits near 1, where absolute steps vanish)
ANCHOR_WEIGHT = 10.0  # a plain T off by 0.1 costs as much as a commanded T short of its margin by 0.1
DEFAULT_DETERMINISTIC_T = 0.1  # "deterministic" pushes T below this


def insert_command(prompt: str, command: str) -> str:
    """A plain-text prompt with ``command`` on its own line before the line the answer continues
    ("Question: ...\\nAnswer:" -> "Question: ...\\n<command>\\nAnswer:"), or after the prompt when
    the answer starts on a new line."""
    if prompt.endswith("\n"):
        return f"{prompt}{command}\n"
    head, newline, last = prompt.rpartition("\n")
    return f"{head}{newline}{command}\n{last}"


def command_prompt(prompt: str | list[dict[str, str]], command: str) -> str | list[dict[str, str]]:
    """A prompt (text, or chat messages) with ``command`` where a user would write it: for
    messages, at the end of the last user turn."""
    if isinstance(prompt, str):
        return insert_command(prompt, command)
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise AutoDecoError("a chat prompt has no user turn to add a command to")
    messages[users[-1]]["content"] = f"{messages[users[-1]]['content'].rstrip()} {command}"
    return messages


def command_record(record: dict[str, Any], command: str, tokenizer: Any) -> dict[str, Any]:
    """A training record (any shape :mod:`autodeco.training.data` reads) with ``command`` added to
    its prompt and its completion unchanged. Token-id records are decoded, commanded and encoded
    again on the prompt side only; their completion ids stay as sampled."""
    if "messages" in record:
        if not isinstance(record["messages"], list) or len(record["messages"]) < 2:
            raise AutoDecoError("a chat record needs a user turn and the answer to add a command to")
        *conversation, answer = record["messages"]
        return {**record, "messages": [*command_prompt(conversation, command), answer]}
    if "prompt_ids" in record:
        prompt = tokenizer.decode(record["prompt_ids"], skip_special_tokens=True)
        ids = tokenizer(insert_command(prompt, command)).input_ids
        return {**record, "prompt_ids": ids, "prompt": insert_command(prompt, command)}
    if "prompt" in record:
        return {**record, "prompt": insert_command(record["prompt"], command)}
    raise AutoDecoError(f"a record with fields {sorted(record)} has no prompt to add a command to")


@dataclass(frozen=True)
class ControlPair:
    """A commanded record and the index of its plain original in the augmented list."""

    record: dict[str, Any]
    plain: int
    condition: str
    phrasing: str


def augment(
    records: list[dict[str, Any]], tokenizer: Any, *, variants: int = 1, seed: int = 0,
    phrasings: dict[str, tuple[str, ...]] | None = None,
) -> list[ControlPair]:
    """``variants`` commanded copies of each record: the conditions in turn (so the three are
    balanced), each with a phrasing drawn at random from ``phrasings`` (default: the trained
    list). Raises a named error for an empty phrasing list or when no record can take a command;
    records that cannot (no prompt text) are skipped."""
    phrasings = PHRASINGS if phrasings is None else phrasings
    empty = [c for c in CONDITIONS if not phrasings.get(c)]
    if empty:
        raise AutoDecoError(f"no phrasings for condition(s) {', '.join(empty)}; give at least one command per condition")
    if variants < 1:
        raise AutoDecoError(f"variants must be at least 1, got {variants}")
    rng = random.Random(seed)
    pairs, refused = [], []
    for index, record in enumerate(records):
        for variant in range(variants):
            condition = CONDITIONS[(index * variants + variant) % len(CONDITIONS)]
            phrasing = rng.choice(phrasings[condition])
            try:
                pairs.append(ControlPair(command_record(record, phrasing, tokenizer), index, condition, phrasing))
            except AutoDecoError as error:
                refused.append(str(error))
    if not pairs:
        reason = refused[0] if refused else "there are no records"
        raise AutoDecoError(f"no record could take a decoding command ({reason}); NL control needs prompts with text")
    return pairs


def load_control_examples(
    path: str | Path, tokenizer: Any, max_length: int, overflow: Overflow = "truncate", *, variants: int = 1, seed: int = 0,
) -> tuple[list[Example], dict[int, tuple[int, int]], DataStats]:
    """The training file's examples followed by their commanded copies (:func:`augment`), and
    ``control``: commanded example index -> (its plain example's index, condition index). A copy
    whose original was dropped (too long, empty) is dropped too."""
    check_limits(max_length, overflow)
    numbered = read_records(path)
    pairs = augment([record for _, record in numbered], tokenizer, variants=variants, seed=seed)
    stats = DataStats(str(path))
    records = [(f"{path}:{number}", record) for number, record in numbered]
    records += [(f"{path}:{numbered[pair.plain][0]} with {pair.condition} command {pair.phrasing!r}", pair.record) for pair in pairs]
    prepared = prepare_examples(records, tokenizer, max_length, overflow, stats)
    examples: list[Example] = []
    position: dict[int, int] = {}  # record index -> example index
    for index, example in enumerate(prepared[: len(numbered)]):
        if example is not None:
            position[index] = len(examples)
            examples.append(example)
    control: dict[int, tuple[int, int]] = {}
    for pair, example in zip(pairs, prepared[len(numbered):]):
        if example is not None and pair.plain in position:
            control[len(examples)] = (position[pair.plain], CONDITIONS.index(pair.condition))
            examples.append(example)
    if not control:
        raise AutoDecoError(f"{stats.summary()}: no commanded example is left to train NL control on; raise --max-length")
    return examples, control, stats


def ranking_loss(
    temperature: torch.Tensor, top_p: torch.Tensor, plain_temperature: torch.Tensor, plain_top_p: torch.Tensor, condition: torch.Tensor, *,
    t_margin: float = DEFAULT_T_MARGIN, p_margin: float = DEFAULT_P_MARGIN, deterministic_t: float = DEFAULT_DETERMINISTIC_T,
) -> torch.Tensor:
    """Per-position ranking loss ``[N]`` of commanded T, P against the plain prompt's values at
    the same completion positions (``plain_*`` are targets: no gradient flows into them).

    With m_T = ``t_margin``, m_P = ``p_margin``, z(P) = log(P / (1 - P)) and t_d = ``deterministic_t``:

        high:          relu(m_T - (T - T_plain)) + relu(m_P - (z(P) - z(P_plain)))
        low:           relu(m_T - (T_plain - T)) + relu(m_P - (z(P_plain) - z(P)))
        deterministic: relu(T - t_d)             + relu(m_P - (z(P_plain) - z(P)))

    ``condition [N]`` holds indices into :data:`CONDITIONS`. Zero once every commanded token
    moves by the margins the right way; the usual AutoDeco losses, on the plain and the commanded
    examples, keep the values accurate.
    """
    plain_temperature, plain_top_p = plain_temperature.detach(), plain_top_p.detach()
    t_up = torch.relu(t_margin - (temperature - plain_temperature))
    t_down = torch.relu(t_margin - (plain_temperature - temperature))
    p_up = torch.relu(p_margin - (_logit(top_p) - _logit(plain_top_p)))
    p_down = torch.relu(p_margin - (_logit(plain_top_p) - _logit(top_p)))
    t_low = torch.relu(temperature - deterministic_t)
    high, low, deterministic = (condition == CONDITIONS.index(c) for c in CONDITIONS)
    return torch.where(high, t_up + p_up, torch.where(low, t_down + p_down, torch.where(deterministic, t_low + p_down, torch.zeros_like(t_up))))


def anchor_loss(temperature: torch.Tensor, top_p: torch.Tensor, reference_temperature: torch.Tensor, reference_top_p: torch.Tensor) -> torch.Tensor:
    """Per-position ``w * ((T - T_ref)^2 + (P - P_ref)^2)`` (w = :data:`ANCHOR_WEIGHT`) on plain prompts: keeps the values of the
    heads training started from where commands are absent. Without it the ranking loss, whose
    "low" and "deterministic" terms both push P down while the usual top-p loss is flat wherever
    the base's argmax is right, drags the plain P down with the commanded ones (measured on
    Gemma-3-270M: P 1.0 -> 0.2 in 80 steps)."""
    return ANCHOR_WEIGHT * ((temperature - reference_temperature).square() + (top_p - reference_top_p).square())


def _logit(p: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)), with P kept off 0 and 1 so that saturated heads stay finite."""
    return torch.logit(p.float(), eps=1e-6)
