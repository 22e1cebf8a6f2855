"""Self-generated training data, as in the paper: the base model's own sampled answers to
training problems, verified by the task, kept when correct, in the training JSONL format.

Sampling runs through the evaluation runner, so it is batched and resumable (the samples live in
``OUT.samples/`` beside the output file) and each sample keeps its exact token ids: the data
holds ``prompt_ids``/``completion_ids``, because re-tokenising sampled text can change the tokens.
Problems come from the task's training split, whose seeds and questions never meet evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autodeco.engine import encode_prompts
from autodeco.errors import AutoDecoError
from autodeco.evaluation.runner import EvalPlan, EvalSettings, Evaluator
from autodeco.evaluation.strategies import static_decoding
from autodeco.evaluation.tasks import Task, has_train_split, load_task, parse_known_task_spec
from autodeco.io import atomic_write_text, prepare_output_dir


@dataclass(frozen=True)
class TaskYield:
    """How much verified data one task gave."""

    task: str
    problems: int
    samples: int
    correct: int
    problems_solved: int

    @property
    def rate(self) -> float:
        return self.correct / self.samples if self.samples else 0.0


def training_task(spec: str) -> Task:
    """The training split of a task; tasks without one are refused (their problems are evaluation problems)."""
    family, _, options = parse_known_task_spec(spec)
    if not has_train_split(family):
        raise AutoDecoError(f"task {spec!r} has no training split; sample training data from reasoning_gym tasks (their split=train never meets evaluation)")
    if options.get("split", "train") != "train":
        raise AutoDecoError(f"task {spec!r}: training data must come from split=train, never from the test split")
    return load_task(spec if "split" in options else f"{spec},split=train")


def samples_folder(out: Path, work: Path | None = None) -> Path:
    """Check the outputs before any sampling: ``out`` must be a file path whose folder can be
    written; the samples folder (``work``, default ``OUT.samples``) is made and returned."""
    if out.is_dir():
        raise AutoDecoError(f"--out {out} is a folder; sample-data writes one JSONL file: pass a file path such as {out / 'train.jsonl'}")
    folder = prepare_output_dir(work or out.with_name(out.name + ".samples"), overwrite=True, what="samples")  # earlier samples are reused
    prepare_output_dir(out.parent, overwrite=True, what="output")
    return folder


def completion_ids(record: dict[str, Any]) -> list[int]:
    """The sampled tokens plus the sampled token that ended the answer (EOS or the newline token
    of a stop string, exactly as sampled), so the heads also learn how the model stops."""
    ending = record.get("stop_token_id")
    return list(record["token_ids"]) + ([ending] if ending is not None else [])


def sample_training_data(
    model: Any, tokenizer: Any, settings: EvalSettings, task_specs: list[str], out: Path, *, problems: int, samples: int,
    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, work: Path | None = None, console: Console | None = None,
) -> list[TaskYield]:
    """Sample ``samples`` answers to each of ``problems`` training problems per task, keep the
    verified-correct ones in ``out`` (JSONL, written atomically) and return the yield per task.
    The samples live in ``work`` (default ``OUT.samples``), which several runs may share."""
    console = console or Console(stderr=True)
    tasks = [training_task(spec) for spec in task_specs]
    decoding = static_decoding(temperature, top_p)
    evaluator = Evaluator(model, tokenizer, settings, samples_folder(out, work), console)
    plan = EvalPlan(tasks=tasks, strategies=[], samples=samples, batch_size=batch_size)
    lines, yields = [], []
    for task in tasks:
        chosen = task.problems()[:problems]
        by_id = {p.id: p for p in chosen}
        records = evaluator.samples(task, chosen, decoding, plan)
        correct = [r for r in records if r["correct"]]
        solved = sorted({r["problem"] for r in correct})
        prompts = {pid: evaluator.prompt(task, by_id[pid])[0] for pid in solved}  # built once by the evaluator
        prompt_ids = dict(zip(solved, encode_prompts(tokenizer, [prompts[pid] for pid in solved], chat=settings.chat)))
        for record in correct:
            prompt = prompts[record["problem"]]
            lines.append(json.dumps({
                "prompt_ids": prompt_ids[record["problem"]],
                "completion_ids": completion_ids(record),
                "prompt": prompt if isinstance(prompt, str) else None, "completion": record["text"],
                "task": task.name, "problem": record["problem"], "sample": record["sample"],
            }, ensure_ascii=False))
        yields.append(TaskYield(task.name, len(chosen), len(records), len(correct), len(solved)))
    atomic_write_text("".join(line + "\n" for line in lines), out)
    return yields


def yield_table(yields: list[TaskYield]) -> Table:
    """A rich table of the yield per task."""
    table = Table(title="Verified-correct samples kept")
    for column in ("task", "problems", "samples", "correct", "yield", "problems solved"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for y in yields:
        table.add_row(y.task, str(y.problems), str(y.samples), str(y.correct), f"{y.rate:.1%}", str(y.problems_solved))
    return table
