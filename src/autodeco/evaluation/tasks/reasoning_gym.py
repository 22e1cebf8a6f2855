"""reasoning_gym:<dataset>: procedurally generated problems with their own scorers.

The question space is split in three by a hash of each question's text: ``test`` keeps half of
it, ``dev`` 3/16 and ``train`` 5/16, so training data, the choices made on dev (an oracle's T and P,
a training variant) and the evaluation never share a question, whatever the seeds and sizes (small
spaces such as one-digit sums included). Within a split each question appears once. Few-shot
examples come from the train part.

Options: ``split`` (``test`` by default, ``dev`` or ``train``), ``seed`` (the generator's seed;
each split has its own default), ``size`` (questions drawn before the split and de-duplication,
default 1000), ``shots`` (few-shot examples for base models, default 3), ``worked`` (``true``:
the few-shot answers are worked one-line solutions ending in "The answer is X", see
:mod:`autodeco.evaluation.tasks.worked`), and any keyword of the dataset's config (``min_terms=2``, ...).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

from autodeco.engine import Prompt
from autodeco.errors import AutoDecoError
from autodeco.evaluation.tasks import Problem, Score, Task, few_shot_prompt, register_task, require, user_turn
from autodeco.evaluation.tasks.answers import extract_answer
from autodeco.evaluation.tasks.worked import FORMATTERS, worked_answer

TEST_SEED = 20_260
TRAIN_SEED = 7_777_777
DEV_SEED = 31_337
SHOT_SEED = 99_991  # few-shot examples: a third seed, from the train half
DEFAULT_SIZE = 1000
OWN_OPTIONS = {"seed": int, "size": int, "shots": int, "split": str, "worked": str}


def _value(text: str) -> Any:
    """A config value from the command line: int, float, true/false or text."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


SPLITS = {"test": TEST_SEED, "dev": DEV_SEED, "train": TRAIN_SEED}


def split_of(question: str) -> str:
    """``test``, ``dev`` or ``train``: which part of the question space a question belongs to."""
    byte = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()[0]
    return "test" if byte < 128 else "dev" if byte < 176 else "train"


class ReasoningGymTask(Task):
    def __init__(self, dataset: str, options: dict[str, str]) -> None:
        self.rg = require("reasoning_gym", "reasoning-gym")
        known = sorted(require("reasoning_gym.factory", "reasoning-gym").DATASETS)
        if dataset not in known:
            raise AutoDecoError(f"reasoning_gym has no dataset {dataset!r}; it has: {', '.join(known)}")
        self.dataset_name = dataset
        self.options = options
        own = {key: options[key] for key in OWN_OPTIONS if key in options}
        self.config = {key: _value(value) for key, value in options.items() if key not in OWN_OPTIONS}
        self.split = own.get("split", "test")
        if self.split not in SPLITS:
            raise AutoDecoError(f"reasoning_gym split={self.split!r} is unknown; use {', '.join(SPLITS)}")
        self.size = int(own.get("size", DEFAULT_SIZE))
        self.seed = int(own.get("seed", SPLITS[self.split]))
        self.shots = int(own.get("shots", 3))
        self.worked = _value(own.get("worked", "false"))
        if self.worked not in (True, False):
            raise AutoDecoError(f"reasoning_gym worked={own['worked']!r}: write worked=true or worked=false")
        if self.worked and dataset not in FORMATTERS:
            raise AutoDecoError(f"reasoning_gym worked=true has worked answers for {', '.join(FORMATTERS)} only, not {dataset!r}")
        self._datasets: dict[int, Any] = {}

    def _dataset(self, seed: int) -> Any:
        if seed not in self._datasets:
            try:
                self._datasets[seed] = self.rg.create_dataset(self.dataset_name, size=self.size, seed=seed, **self.config)
            except (ValueError, TypeError, AssertionError, KeyError) as error:
                raise AutoDecoError(f"reasoning_gym cannot build {self.dataset_name!r} with {self.config or 'its default config'}: {error}") from error
        return self._datasets[seed]

    def _entries(self, seed: int, split: str) -> list[tuple[int, dict]]:
        """(index, entry) of the dataset drawn with ``seed`` whose questions lie in ``split``, each question once."""
        kept, seen = [], set()
        for index, entry in enumerate(self._dataset(seed)):
            if entry["question"] not in seen and split_of(entry["question"]) == split:
                seen.add(entry["question"])
                kept.append((index, entry))
        return kept

    def problems(self) -> list[Problem]:
        return [Problem(f"{self.seed}-{i}", e["question"], e) for i, e in self._entries(self.seed, self.split)]

    @cached_property
    def few_shots(self) -> list[tuple[str, str]]:
        """Worked examples from a third seed and the train part: never a test or dev question."""
        entries = [e for _, e in self._entries(SHOT_SEED, "train")[: self.shots]]
        return [(e["question"], worked_answer(self.dataset_name, e) if self.worked else str(e["answer"])) for e in entries]

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"{problem.question}\nGive your final answer after 'Answer:'.")
        return few_shot_prompt(self.few_shots, problem.question)

    def stop(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n",)  # the few-shot answers are one line

    def score(self, problem: Problem, completion: str) -> Score:
        answer = extract_answer(completion)
        if answer is None:
            return Score(False, None)
        value = self._dataset(self.seed).score_answer(answer, problem.reference)
        return Score(value is not None and float(value) >= 1.0, answer)

    def dev_task(self) -> Task | None:
        """This configuration on the dev split, drawn with the dev split's own seed (a ``seed=``
        chosen for this split is not carried over) and named ``reasoning_gym:DATASET[,...],split=dev``
        so its samples are filed apart; None when this task is the dev split."""
        if self.split == "dev":
            return None
        options = {key: value for key, value in self.options.items() if key not in ("split", "seed")} | {"split": "dev"}
        dev = ReasoningGymTask(self.dataset_name, options)
        dev.name = f"reasoning_gym:{self.dataset_name}" + "".join(f",{key}={value}" for key, value in options.items())
        return dev


@register_task("reasoning_gym", has_train_split=True)
def _reasoning_gym(argument: str | None, options: dict[str, str]) -> Task:
    if not argument:
        raise AutoDecoError("name the reasoning_gym dataset, e.g. reasoning_gym:basic_arithmetic")
    return ReasoningGymTask(argument, options)
