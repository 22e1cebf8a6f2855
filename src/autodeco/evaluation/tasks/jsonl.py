"""jsonl:<file>: the user's own problems, one ``{"prompt": ..., "answer": ...}`` object per line.

An optional ``"id"`` names a problem (default: its line number). Prompts are used as written (or
as a user turn for chat models). Option ``verifier``: exact, numeric (default), math or regex
(``answer`` is a pattern searched for in the whole completion).
"""

from __future__ import annotations

from pathlib import Path

from autodeco.engine import Prompt
from autodeco.errors import AutoDecoError
from autodeco.evaluation.tasks import Problem, Score, Task, register_task, take_options, user_turn
from autodeco.evaluation.tasks.answers import extract_answer, verifier
from autodeco.io import read_jsonl


class JsonlTask(Task):
    def __init__(self, path: Path, verifier_name: str) -> None:
        self.path = path
        self.verifier_name = verifier_name
        self.verify = verifier(verifier_name)

    def problems(self) -> list[Problem]:
        problems, seen = [], set()
        for number, record in read_jsonl(self.path, "task file", 'give jsonl:PATH to a file of {"prompt", "answer"} lines'):
            where = f"{self.path}:{number}"
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                raise AutoDecoError(f'{where}: needs a non-empty string "prompt"')
            if not isinstance(record.get("answer"), (str, int, float)) or isinstance(record.get("answer"), bool):
                raise AutoDecoError(f'{where}: needs an "answer" (a string or a number)')
            problem_id = str(record.get("id", number))
            if problem_id in seen:
                raise AutoDecoError(f"{where}: id {problem_id!r} appears twice; ids must be unique")
            seen.add(problem_id)
            problems.append(Problem(problem_id, record["prompt"], str(record["answer"])))
        if not problems:
            raise AutoDecoError(f"{self.path} holds no problems")
        return problems

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        return user_turn(problem.question) if chat else problem.question

    def score(self, problem: Problem, completion: str) -> Score:
        answer = completion if self.verifier_name == "regex" else extract_answer(completion)
        if not answer or not answer.strip():
            return Score(False, None)
        return Score(self.verify(answer, problem.reference), answer.strip())


@register_task("jsonl")
def _jsonl(argument: str | None, options: dict[str, str]) -> Task:
    if not argument:
        raise AutoDecoError("give the file: jsonl:PATH (one {\"prompt\", \"answer\"} object per line)")
    typed = take_options(f"jsonl:{argument}", options, {"verifier": str})
    return JsonlTask(Path(argument).expanduser(), typed.get("verifier", "numeric"))
