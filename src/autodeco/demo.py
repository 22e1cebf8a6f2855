"""What ``autodeco demo`` shows: a few prompts for a base model (few-shot arithmetic, a word
problem, an open-ended line), each with its stop string and length."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_HEADS = "gemma-3-270m"  # shipped with the package


@dataclass(frozen=True)
class DemoPrompt:
    title: str
    prompt: str
    stop: tuple[str, ...]
    max_new_tokens: int


DEMO_PROMPTS = (
    DemoPrompt(
        "Arithmetic",
        "Question: Calculate 4 + 3.\nAnswer: 7\n\nQuestion: Calculate 9 - 5.\nAnswer: 4\n\nQuestion: Calculate 8 + 6.\nAnswer:",
        ("\n",), 8,
    ),
    DemoPrompt(
        "A word problem",
        "Question: Sara has 5 pencils. She gives 2 to Tom. How many pencils does Sara have left?\nAnswer: 3\n\n"
        "Question: A box holds 4 eggs. How many eggs are in 3 boxes?\nAnswer:",
        ("\n",), 12,
    ),
    DemoPrompt("An open-ended line", "The sea at night is", ("\n",), 40),
)
