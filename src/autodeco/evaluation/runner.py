"""The resumable evaluation runner: tasks x strategies -> sample records -> metrics.

Every sample is appended to ``OUT/samples.jsonl`` (one JSON record, with its per-token T and P
and a fingerprint of its prompt) as soon as its batch is scored, so an interrupted run resumes
where it stopped: work is split into fixed batches of the full (problem, sample) list and a sample
already on disk is never redone, unless the task now builds another prompt for it.
``OUT/run.json`` records the settings that shape the samples; resuming with other settings is
refused. Each (problem, sample) pair gets one seed, shared by all strategies (common random
numbers make the differences between strategies less noisy), and every strategy but the baseline
is compared with it problem by problem (``paired`` in its metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from autodeco.engine import generate
from autodeco.errors import AutoDecoError
from autodeco.evaluation.metrics import paired_comparison, summarise
from autodeco.evaluation.strategies import (
    AUTODECO, DEFAULT_ORACLE_TEMPERATURES, DEFAULT_ORACLE_TOP_PS, Decoding, Strategy, mean_decoding, resolve_baseline, static_decoding,
)
from autodeco.evaluation.tasks import Problem, Task
from autodeco.io import atomic_write_text, prepare_output_dir, read_jsonl_resuming

SAMPLES_NAME = "samples.jsonl"
RUN_NAME = "run.json"


@dataclass(frozen=True)
class EvalSettings:
    """What shapes the samples. A resumed run must match it, except for the heads: samples that
    used the heads are filed under the heads' fingerprint, so new heads reuse every baseline."""

    model: str
    heads: str | None
    heads_sha256: str | None
    chat: bool
    max_new_tokens: int
    seed: int
    dtype: str

    def identity(self) -> dict[str, Any]:
        """The settings every sample depends on (the heads matter only to some)."""
        return {k: v for k, v in asdict(self).items() if k not in ("heads", "heads_sha256")}

    @property
    def heads_id(self) -> str:
        """A short fingerprint of the heads (their weights' sha256, else their path)."""
        return (self.heads_sha256 or hashlib.sha256(str(self.heads).encode()).hexdigest())[:12]


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate: these may grow between runs of the same OUT (more tasks, problems, samples).

    ``baseline``: the strategy the others are compared with (None: autodeco if listed, else the
    first); ``oracle_dev_limit``: how many dev problems ``oracle-dev`` tunes on. A plan that cannot
    run (an unknown baseline, oracle-dev on a task without a dev split) is refused when made.
    """

    tasks: list[Task]
    strategies: list[Strategy]
    samples: int = 4
    limit: int | None = None
    batch_size: int = 32
    oracle_temperatures: tuple[float, ...] = DEFAULT_ORACLE_TEMPERATURES
    oracle_top_ps: tuple[float, ...] = DEFAULT_ORACLE_TOP_PS
    baseline: str | None = None
    oracle_dev_limit: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "baseline", resolve_baseline(self.strategies, self.baseline))
        if any(s.kind == "oracle-dev" for s in self.strategies):
            for task in self.tasks:
                if task.dev_task() is None:
                    raise AutoDecoError(
                        f"task {task.name!r} has no dev split apart from its own problems; oracle-dev needs one "
                        "(reasoning_gym tasks have split=dev); drop oracle-dev or use oracle"
                    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prompt_digest(prompt: Any) -> str:
    """A short fingerprint of a prompt (text or chat messages)."""
    return hashlib.sha256(json.dumps(prompt, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def sample_seed(seed: int, task: str, problem_id: str, sample: int) -> int:
    """One seed per (task, problem, sample), the same for every strategy."""
    digest = hashlib.blake2b(f"{seed}\0{task}\0{problem_id}\0{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SampleStore:
    """``samples.jsonl``: records appended per batch (flushed and synced); read back on resume.

    A line cut short by a crash is dropped (and cut from the file), and a record seen twice is
    kept once, so no sample is ever counted twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        if path.is_file():
            self._load()

    def _load(self) -> None:
        for record in read_jsonl_resuming(self.path):
            self.records[self.key(record)] = record

    @staticmethod
    def key(record: dict[str, Any]) -> tuple[str, str, str, int]:
        return record["task"], record["decoding"], record["problem"], record["sample"]

    def has(self, task: str, decoding: str, problem: str, sample: int) -> bool:
        return (task, decoding, problem, sample) in self.records

    def get(self, task: str, decoding: str, problem: str, sample: int) -> dict[str, Any]:
        return self.records[(task, decoding, problem, sample)]

    def append(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.records[self.key(record)] = record


def check_settings(out: Path, settings: EvalSettings) -> None:
    """Write ``run.json`` on the first run; on later runs refuse settings that differ."""
    path = out / RUN_NAME
    current = settings.identity()
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [f"{key}: {previous.get(key)!r} then, {value!r} now" for key, value in current.items() if previous.get(key) != value]
        if changed:
            raise AutoDecoError(
                f"{out} holds samples made with other settings ({'; '.join(changed)}); "
                "use a new --out, or the same settings to resume (other heads are fine)"
            )
    else:
        atomic_write_text(json.dumps(current, indent=2) + "\n", path)


class Evaluator:
    """Runs a plan on one model and returns ``{task: {strategy: metrics}}``; resumable."""

    def __init__(self, model: Any, tokenizer: Any, settings: EvalSettings, out: Path, console: Console | None = None) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.out = out
        self.console = console or Console(stderr=True)
        prepare_output_dir(out, overwrite=True, what="samples")  # an earlier run's samples are resumed
        check_settings(out, settings)
        self.store = SampleStore(out / SAMPLES_NAME)
        self.used: dict[tuple[str, str, str, int], dict[str, Any]] = {}  # the records behind the results
        self._prompts: dict[tuple[str, str], tuple[Any, str]] = {}  # (task, problem) -> (prompt, fingerprint), built once

    def run(self, plan: EvalPlan) -> dict[str, dict[str, dict[str, Any]]]:
        if any(s.uses_heads for s in plan.strategies) and self.settings.heads is None:
            raise AutoDecoError("strategies autodeco and mean need the learned T and P: pass --heads (or drop them)")
        results = {}
        for task in plan.tasks:
            problems = task.problems()[: plan.limit]
            if not problems:
                raise AutoDecoError(f"task {task.name!r} has no problems")
            results[task.name] = self._run_task(task, problems, plan)
        return results

    def _run_task(self, task: Task, problems: list[Problem], plan: EvalPlan) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        records: dict[str, list[dict[str, Any]]] = {}  # each strategy's records behind its metrics
        for strategy in sorted(plan.strategies, key=lambda s: s.decoding is None):  # derived ones last
            decoding, notes = self._decoding(strategy, task, problems, plan)
            records[strategy.label] = self.samples(task, problems, decoding, plan)
            results[strategy.label] = {**summarise(records[strategy.label], task.open_ended), "params": {**decoding.settings(), **notes}}
        for label, metrics in results.items():
            if label != plan.baseline:
                metrics["paired"] = paired_comparison(records[label], records[plan.baseline], plan.baseline)
        return {s.label: results[s.label] for s in plan.strategies}

    def _decoding(self, strategy: Strategy, task: Task, problems: list[Problem], plan: EvalPlan) -> tuple[Decoding, dict[str, Any]]:
        """The decoding a strategy measures on ``problems``, and what its report says of how it was chosen."""
        if strategy.decoding is not None:
            return strategy.decoding, {}
        if strategy.kind == "oracle":
            decoding, search = self._oracle(task, problems, plan)
            return decoding, {"tuned_on": "test", **search}
        if strategy.kind == "oracle-dev":
            dev = task.dev_task()
            dev_problems = dev.problems()[: plan.oracle_dev_limit]
            if not dev_problems:
                raise AutoDecoError(f"task {dev.name!r} has no problems to tune oracle-dev on")
            decoding, search = self._oracle(dev, dev_problems, plan)
            return decoding, {"tuned_on": "dev", "dev_task": dev.name, "dev_problems": len(dev_problems), **search}
        return mean_decoding(self.samples(task, problems, AUTODECO, plan)), {"from": "mean T and P of autodeco on this task"}

    def _oracle(self, task: Task, problems: list[Problem], plan: EvalPlan) -> tuple[Decoding, dict[str, Any]]:
        """The paper's oracle search on these problems: the best T at P=1, then the best P at that
        T (first best on ties, by pass@1). Returns the winner and ``{"grid", "sweep"}`` (pass@1 of
        every decoding tried)."""
        sweep: dict[str, float] = {}

        def best(decodings: list[Decoding]) -> Decoding:
            for decoding in decodings:
                sweep[decoding.key] = summarise(self.samples(task, problems, decoding, plan))["pass@1"]
            return max(decodings, key=lambda d: sweep[d.key])

        temperature = best([static_decoding(t, 1.0) for t in plan.oracle_temperatures]).params.temperature
        winner = best([static_decoding(temperature, p) for p in plan.oracle_top_ps])
        return winner, {"grid": {"temperature": list(plan.oracle_temperatures), "top_p": list(plan.oracle_top_ps)}, "sweep": sweep}

    def samples(self, task: Task, problems: list[Problem], decoding: Decoding, plan: EvalPlan) -> list[dict[str, Any]]:
        """All records of ``decoding`` on these problems, generating the missing ones."""
        samples = 1 if decoding.deterministic else plan.samples
        prompts = {p.id: self.prompt(task, p) for p in problems}
        digests = {pid: digest for pid, (_, digest) in prompts.items()}
        items = [(problem, sample) for problem in problems for sample in range(samples)]
        batches = [items[i:i + plan.batch_size] for i in range(0, len(items), plan.batch_size)]
        key = self._filed_under(decoding)
        todo = [[(p, s) for p, s in batch if not self._stored(task.name, key, p.id, s, digests[p.id])] for batch in batches]
        todo = [batch for batch in todo if batch]
        if todo:
            with _ProgressBar(self.console, f"{decoding.key} · {task.name}", sum(len(b) for b in todo)) as advance:
                for batch in todo:
                    records = self._generate(task, decoding, batch, prompts)
                    self.store.append(records)
                    advance(len(batch), sum(len(r["token_ids"]) for r in records))
        records = [self.store.get(task.name, key, p.id, s) for p, s in items]
        self.used.update((SampleStore.key(r), r) for r in records)
        return records

    def _filed_under(self, decoding: Decoding) -> str:
        """The store key of a decoding's samples: with the heads' fingerprint if it uses them."""
        return f"{decoding.key}@heads:{self.settings.heads_id}" if decoding.uses_heads else decoding.key

    def prompt(self, task: Task, problem: Problem) -> tuple[Any, str]:
        """The problem's prompt and its fingerprint, built once for all decodings."""
        key = (task.name, problem.id)
        if key not in self._prompts:
            prompt = task.prompt(problem, self.settings.chat)
            self._prompts[key] = (prompt, prompt_digest(prompt))
        return self._prompts[key]

    def _stored(self, task: str, decoding: str, problem: str, sample: int, digest: str) -> bool:
        """A record exists and was made from the same prompt (a changed prompt builder redoes it)."""
        return self.store.has(task, decoding, problem, sample) and self.store.get(task, decoding, problem, sample).get("prompt_sha") == digest

    def _generate(
        self, task: Task, decoding: Decoding, batch: list[tuple[Problem, int]], prompts: dict[str, tuple[Any, str]]
    ) -> list[dict[str, Any]]:
        params = [
            replace(decoding.params, max_new_tokens=self.settings.max_new_tokens, stop=task.stop(self.settings.chat),
                    seed=sample_seed(self.settings.seed, task.name, problem.id, sample))
            for problem, sample in batch
        ]
        started = time.perf_counter()
        completions = generate(self.model, self.tokenizer, [prompts[p.id][0] for p, _ in batch], params)
        seconds = (time.perf_counter() - started) / len(batch)
        records = []
        for (problem, sample), completion, param in zip(batch, completions, params):
            score = task.score(problem, completion.text)
            records.append({
                "task": task.name, "decoding": self._filed_under(decoding), "problem": problem.id, "sample": sample, "seed": param.seed,
                "prompt_sha": prompts[problem.id][1],
                "text": completion.text, "answer": score.answer, "answered": score.answer is not None,
                "correct": bool(score.correct), "extras": score.extras, "finish_reason": completion.finish_reason,
                "stop_token_id": completion.stop_token_id,
                "token_ids": completion.token_ids, "pieces": [t.text for t in completion.tokens],
                "temperatures": [round(t, 4) for t in completion.temperatures], "top_ps": [round(p, 4) for p in completion.top_ps],
                "seconds": seconds,
            })
        return records

class _ProgressBar:
    """A rich bar for one (task, decoding): samples done, tokens/s, time left."""

    def __init__(self, console: Console, description: str, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(), console=console,
        )
        self.task = self.progress.add_task(description, total=total, speed="")
        self.started, self.tokens = time.perf_counter(), 0

    def __enter__(self) -> Callable[[int, int], None]:
        self.progress.start()
        return self.advance

    def advance(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=samples, speed=f"{rate:.0f} tok/s")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

