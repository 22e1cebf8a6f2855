"""Worked answers for few-shot prompts: a one-line solution that ends in "The answer is X".

With ``worked=true`` a reasoning_gym task shows its few-shot examples solved step by step, so a
base model answers in the same format: answers of 15-40 tokens instead of 2-3, which gives a
per-token temperature something to act on. Scoring is unchanged: the answer extractor reads what
follows the last "answer is". Each formatter takes a reasoning_gym entry and returns the line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def chain_sum(entry: dict[str, Any]) -> str:
    """``5 + 9 + 7`` -> ``5 + 9 = 14, 14 + 7 = 21. The answer is 21``: left to right, one step per term."""
    parts = entry["metadata"]["expression"].split()
    total = int(parts[0])
    steps = []
    for operator, operand in zip(parts[1::2], parts[2::2]):
        value = int(operand)
        new_total = total + value if operator == "+" else total - value
        steps.append(f"{total} {operator} {value} = {new_total}")
        total = new_total
    return f"{', '.join(steps)}. The answer is {total}"


def letter_counting(entry: dict[str, Any]) -> str:
    """Spell each word, count the letter: ``free: f, r, e, e (0 + ...)`` ends in the count."""
    letter = entry["metadata"]["target_letter"]
    words = entry["metadata"]["span"]
    counts = [word.lower().count(letter) for word in words]
    spelled = "; ".join(f"{word}: {', '.join(word)} ({count})" for word, count in zip(words, counts))
    total = sum(counts)
    return f'{spelled}. "{letter}" appears {" + ".join(map(str, counts))} = {total} times. The answer is {total}'


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {"chain_sum": chain_sum, "letter_counting": letter_counting}


def worked_answer(dataset: str, entry: dict[str, Any]) -> str:
    """The worked one-line answer of ``entry`` of ``dataset`` (a key of :data:`FORMATTERS`)."""
    return FORMATTERS[dataset](entry)
