"""The task registry. A task is a loader, a prompt builder, stop strings and a verifier.

A task is named on the command line as ``family[:argument][,key=value,...]``, for example
``reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2``, ``mmath:aime`` or
``jsonl:my.jsonl,verifier=numeric``. Users add their own family with :func:`register_task`.
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autodeco.engine import Prompt
from autodeco.errors import AutoDecoError


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the text shown to the model and what the verifier needs."""

    id: str
    question: str
    reference: Any


@dataclass(frozen=True)
class Score:
    """A verdict on one completion. ``answer`` is what was extracted from it (None when the
    completion holds no answer at all: scored wrong, and counted). ``extras`` holds further
    per-sample metrics of the task (IFEval's loose accuracy)."""

    correct: bool
    answer: str | None
    extras: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """Subclass this and register a factory to add a task."""

    name: str
    open_ended: bool = False  # report distinct-n for it

    @abstractmethod
    def problems(self) -> list[Problem]:
        """All problems of the evaluation set, in a fixed order (``--limit`` takes a prefix)."""

    @abstractmethod
    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        """Few-shot text for a base model, or chat messages when ``chat``."""

    def stop(self, chat: bool) -> tuple[str, ...]:
        """Stop strings for this prompt style (few-shot prompts stop before the next shot)."""
        return ()

    @abstractmethod
    def score(self, problem: Problem, completion: str) -> Score:
        """Extract the answer from ``completion`` and verify it."""

    def dev_task(self) -> Task | None:
        """The same task on a dev split that shares no problem with :meth:`problems`, for choices
        tuned before measuring (the ``oracle-dev`` strategy's T and P); None when there is none."""
        return None


TaskFactory = Callable[[str | None, dict[str, str]], Task]
_FAMILIES: dict[str, TaskFactory] = {}
_BUILTIN_MODULES = ("reasoning_gym", "mmath", "ifeval", "humaneval", "jsonl", "shakespeare")


_TRAIN_SPLIT_FAMILIES: set[str] = set()


def register_task(family: str, has_train_split: bool = False) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: ``factory(argument, options) -> Task`` serves task names ``family[:argument]``.
    ``has_train_split``: the factory takes ``split=train`` and then gives problems that never
    appear in its (default) test split, so training data can be sampled from it."""

    def add(factory: TaskFactory) -> TaskFactory:
        _FAMILIES[family] = factory
        (_TRAIN_SPLIT_FAMILIES.add if has_train_split else _TRAIN_SPLIT_FAMILIES.discard)(family)
        return factory

    return add


def has_train_split(family: str) -> bool:
    """Whether a registered family can give training problems disjoint from its evaluation set."""
    task_families()
    return family in _TRAIN_SPLIT_FAMILIES


def task_families() -> list[str]:
    """Registered family names (built-in ones included)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"autodeco.evaluation.tasks.{module}")
    return sorted(_FAMILIES)


def parse_task_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``family[:argument][,key=value,...]`` -> (family, argument, options)."""
    head, *pairs = [part.strip() for part in spec.split(",")]
    family, _, argument = head.partition(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AutoDecoError(f"task {spec!r}: option {pair!r} is not key=value; write e.g. reasoning_gym:chain_sum,min_terms=2")
        options[key.strip()] = value.strip()
    return family.strip(), argument.strip() or None, options


def parse_known_task_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """:func:`parse_task_spec` for a registered family; an unknown one is refused, listing the
    families (and the closest one, for a typo)."""
    family, argument, options = parse_task_spec(spec)
    families = task_families()
    if family not in families:
        close = difflib.get_close_matches(family, families, n=1)
        raise AutoDecoError(
            f"unknown task {spec!r}; task families are: {', '.join(families)} (e.g. reasoning_gym:basic_arithmetic)"
            + (f"; did you mean {close[0]!r}?" if close else "")
        )
    return family, argument, options


def load_task(spec: str) -> Task:
    """The task a command-line name describes; unknown families are listed in the error."""
    family, argument, options = parse_known_task_spec(spec)
    task = _FAMILIES[family](argument, options)
    task.name = spec
    return task


def require(module: str, package: str) -> Any:
    """Import a task's optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise AutoDecoError(f"this task needs the package {package}, which is not installed; run: pip install 'autodeco[eval]'") from error


def take_options(spec: str, options: dict[str, str], allowed: dict[str, type]) -> dict[str, Any]:
    """Typed values for a task's known options; unknown keys are refused, naming the valid ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AutoDecoError(f"task {spec!r}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(allowed)) or 'none'}")
    typed = {}
    for key, value in options.items():
        try:
            typed[key] = allowed[key](value)
        except ValueError as error:
            raise AutoDecoError(f"task {spec!r}: option {key}={value!r} is not a valid {allowed[key].__name__}") from error
    return typed


def few_shot_prompt(shots: list[tuple[str, str]], question: str, question_label: str = "Question", answer_label: str = "Answer") -> str:
    """``Question: q\\nAnswer: a`` blocks separated by blank lines, ending with the open question."""
    blocks = [f"{question_label}: {q}\n{answer_label}: {a}" for q, a in shots]
    return "\n\n".join([*blocks, f"{question_label}: {question}\n{answer_label}:"])


def user_turn(text: str) -> list[dict[str, str]]:
    """One user message, for chat models."""
    return [{"role": "user", "content": text}]
