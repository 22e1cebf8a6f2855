"""Open-ended generation (issue 20, part 5): continuations of passages from Shakespeare's plays,
measured for diversity and a quality proxy, per decoding strategy, as a quality-diversity plot.

    python benchmarks/evidence/open_ended.py                                  # 100 prompts x 8 samples x 64 tokens
    python benchmarks/evidence/open_ended.py --prompts 4 --samples 2 --max-new-tokens 16 --strategies default,autodeco --out /tmp/oe

The data: the ``shakespeare`` task (test split), fetched once with
``python -m autodeco.evaluation.tasks.shakespeare --fetch``. Gemma-3-270M (float32, the fastest
dtype on a CPU) continues the first ``--prompts`` passages (plain text, no chat template, no stop
string), ``--samples`` samples each, with every strategy: default sampling (T=1, P=1), static
settings, ``mean`` (static at the mean T and P autodeco used on this task) and ``autodeco``
(heads ``--heads``). Samples go through the resumable runner (``Evaluator.samples``): an
interrupted run resumes with the same command, and so does the scoring (``scores.jsonl``).

Per prompt (then mean ± standard error over prompts), on words: distinct-1/2 pooled over the
prompt's samples, self-BLEU-4 across them, the repeated 4-gram rate of each sample; and the
quality proxy, on model tokens: the teacher-forced log-perplexity of each sample under the base
model at T=1, and of Shakespeare's own continuation cut to ``--max-new-tokens`` tokens, with the
gap between the two (see :mod:`autodeco.evaluation.open_ended` for the proxy and its biases).
Writes results.json, report.md and quality_diversity.png into ``--out``. On a CPU, run it with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` (see decode_speed.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from autodeco.cli import load_model_and_tokenizer
from autodeco.engine import encode_prompts
from autodeco.errors import AutoDecoError
from autodeco.evaluation.open_ended import continuation_logprobs, prompt_diversity, repetition_rate, summarise_prompts, words
from autodeco.evaluation.runner import EvalPlan, EvalSettings, Evaluator, file_sha256
from autodeco.evaluation.strategies import AUTODECO, Decoding, mean_decoding, parse_strategies
from autodeco.evaluation.tasks import Problem, load_task
from autodeco.evaluation.tasks.shakespeare import VERSION as DATA_VERSION, ShakespeareTask
from autodeco.io import atomic_write_text, read_jsonl_resuming
from autodeco.models import resolve_heads
from autodeco.plots import pyplot, save_png

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import machine_info, machine_line  # noqa: E402  (benchmarks/machine.py)

OUT = Path(__file__).resolve().parent.parent / "results" / "evidence-gemma-3-270m" / "open-ended"
STRATEGIES = "default,static:0.5,1,static:0.7,1,static:0.9,1,static:1,0.9,mean,autodeco"
SCORES_NAME = "scores.jsonl"
RESULTS_NAME, REPORT_NAME, PLOT_NAME = "results.json", "report.md", "quality_diversity.png"


class ScoreStore:
    """``scores.jsonl``: the summed log-probability and token count of each scored (prompt,
    continuation) pair, keyed by a hash of their token ids; appended per prompt, read on resume
    (a line cut short by a crash is cut from the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores = {record["key"]: record for record in read_jsonl_resuming(path)}

    @staticmethod
    def key(prompt: list[int], continuation: list[int]) -> str:
        return hashlib.sha256(json.dumps([prompt, continuation]).encode()).hexdigest()[:32]

    def log_ppl(self, prompt: list[int], continuation: list[int]) -> float | None:
        record = self.scores[self.key(prompt, continuation)]
        return -record["sum"] / record["tokens"] if record["tokens"] else None

    def score(self, model: Any, prompt: list[int], continuations: list[list[int]], batch_size: int) -> None:
        """Score the continuations not stored yet and append them."""
        todo = {self.key(prompt, c): c for c in continuations if self.key(prompt, c) not in self.scores}
        if not todo:
            return
        logprobs = continuation_logprobs(model, prompt, list(todo.values()), batch_size=batch_size)
        records = [{"key": key, "sum": sum(lp), "tokens": len(lp)} for key, lp in zip(todo, logprobs)]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in records))
        self.scores.update((r["key"], r) for r in records)


def load(args: argparse.Namespace) -> tuple[Any, Any, EvalSettings]:
    """Model with heads, tokenizer and the runner's settings (plain-text prompts)."""
    model, tokenizer = load_model_and_tokenizer(args.model, args.heads, args.dtype, None, False)
    weights = resolve_heads(args.heads) / "model.safetensors"
    settings = EvalSettings(
        model=args.model, heads=str(args.heads), heads_sha256=file_sha256(weights) if weights.is_file() else None,
        chat=False, max_new_tokens=args.max_new_tokens, seed=args.seed, dtype=str(model.dtype),
    )
    return model, tokenizer, settings


def generate_all(evaluator: Evaluator, task: ShakespeareTask, problems: list[Problem], plan: EvalPlan) -> dict[str, tuple[Decoding, list[dict[str, Any]]]]:
    """Each strategy's decoding and sample records (``mean`` after autodeco's samples exist)."""
    found = {}
    for strategy in sorted(plan.strategies, key=lambda s: s.kind == "mean"):
        decoding = strategy.decoding or mean_decoding(evaluator.samples(task, problems, AUTODECO, plan))
        found[strategy.label] = (decoding, evaluator.samples(task, problems, decoding, plan))
    return {s.label: found[s.label] for s in plan.strategies}


def score_all(model: Any, tokenizer: Any, evaluator: Evaluator, task: ShakespeareTask, problems: list[Problem], records: list[dict[str, Any]],
              store: ScoreStore, max_new_tokens: int, batch_size: int, console: Console) -> dict[str, tuple[list[int], list[int]]]:
    """Score every sample and each prompt's human continuation (cut to ``max_new_tokens`` tokens);
    returns problem id -> (prompt ids, human continuation ids)."""
    by_problem = defaultdict(list)
    for record in records:
        by_problem[record["problem"]].append(record["token_ids"])
    ids = {}
    progress = Progress(TextColumn("[bold]teacher-forced scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)
    with progress:
        bar = progress.add_task("score", total=len(problems))
        for problem in problems:
            prompt = encode_prompts(tokenizer, [evaluator.prompt(task, problem)[0]], False)[0]
            human = tokenizer(problem.reference.continuation, add_special_tokens=False).input_ids[:max_new_tokens]
            store.score(model, prompt, [human, *by_problem[problem.id]], batch_size)
            ids[problem.id] = (prompt, human)
            progress.advance(bar)
    return ids


def measure(problems: list[Problem], records: list[dict[str, Any]], ids: dict[str, tuple[list[int], list[int]]], store: ScoreStore) -> dict[str, Any]:
    """One strategy's per-prompt metrics, summarised over prompts, with its mean T and P."""
    by_problem = defaultdict(list)
    for record in records:
        by_problem[record["problem"]].append(record)
    rows = []
    for problem in problems:
        prompt, human = ids[problem.id]
        samples = sorted(by_problem[problem.id], key=lambda r: r["sample"])
        perplexities = [p for r in samples if (p := store.log_ppl(prompt, r["token_ids"])) is not None]
        row: dict[str, float | None] = {**prompt_diversity([r["text"] for r in samples]), "log_ppl": None, "gap": None}
        if perplexities:
            row["log_ppl"] = sum(perplexities) / len(perplexities)
            row["gap"] = row["log_ppl"] - store.log_ppl(prompt, human)
        rows.append(row)
    temperatures = [t for r in records for t in r["temperatures"]]
    top_ps = [p for r in records for p in r["top_ps"]]
    return {
        "metrics": summarise_prompts(rows),
        "mean_temperature": sum(temperatures) / len(temperatures) if temperatures else None,
        "mean_top_p": sum(top_ps) / len(top_ps) if top_ps else None,
        "mean_tokens": sum(len(r["token_ids"]) for r in records) / len(records),
        "empty_samples": sum(not r["token_ids"] for r in records),
    }


def measure_human(problems: list[Problem], ids: dict[str, tuple[list[int], list[int]]], store: ScoreStore, tokenizer: Any) -> dict[str, Any]:
    """Shakespeare's continuations (cut to the generated length): log-perplexity and repeated 4-grams."""
    rows = [{"log_ppl": store.log_ppl(*ids[p.id]), "rep_4": repetition_rate(words(tokenizer.decode(ids[p.id][1])))} for p in problems]
    return {"metrics": summarise_prompts(rows), "mean_tokens": sum(len(ids[p.id][1]) for p in problems) / len(problems)}


def _cell(metric: dict[str, float], digits: int = 3) -> str:
    return f"{metric['mean']:.{digits}f} ± {metric['stderr']:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    setup, human = report["setup"], report["human"]["metrics"]
    lines = [
        "# Open-ended generation: Shakespeare continuations", "", f"`{setup['command']}`", "",
        f"{setup['model']} ({setup['dtype']}) with heads {setup['heads']}; task `{setup['task']}`: the first {setup['prompts']} passages "
        f"(prompts of {setup['prompt_words']}), {setup['samples']} samples each, {setup['max_new_tokens']} new tokens at most, plain-text "
        f"prompts, no stop string, seed {setup['seed']}. Wall time {report['wall_seconds']:.0f} s (this run; samples and scores made by "
        f"earlier runs of the same --out are reused).", "", machine_line(report["machine"]), "",
        "| strategy | mean T | mean P | tokens | distinct-1 | distinct-2 | self-BLEU | rep-4 | log-ppl | gen − human | abs gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in report["strategies"].items():
        m = result["metrics"]
        lines.append(
            f"| {label} | {result['mean_temperature']:.3f} | {result['mean_top_p']:.3f} | {result['mean_tokens']:.1f} | {_cell(m['distinct_1'])} | {_cell(m['distinct_2'])} | "
            f"{_cell(m['self_bleu'])} | {_cell(m['rep_4'])} | {_cell(m['log_ppl'])} | {_cell(m['gap'])} | {abs(m['gap']['mean']):.3f} |"
        )
    lines.append(f"| human (Shakespeare) | | | {report['human']['mean_tokens']:.1f} | | | | {_cell(human['rep_4'])} | {_cell(human['log_ppl'])} | | |")
    lines += [
        "", "Mean ± one standard error over prompts. Text metrics on words (runs of letters, digits and apostrophes, and punctuation "
        "marks): distinct-n = unique / all n-grams of a prompt's samples pooled; self-BLEU = BLEU-4 (NLTK, smoothing method 1) of "
        "each sample against the prompt's other samples, averaged (lower = more diverse); rep-4 = share of a sample's word 4-grams "
        "that repeat an earlier one. log-ppl = teacher-forced log-perplexity per model token under the base model at T=1 (no top-p); "
        f"the human row scores Shakespeare's own continuation, cut to {setup['max_new_tokens']} tokens. gen − human is the per-prompt "
        "difference of the two; abs gap = |its mean| (Holtzman et al., 2020: a decoding is good when its text is about as likely as "
        "human text; lower means dull or repetitive, higher incoherent). The judge is the model that generated the text, and the "
        "human level is high because a 270M model finds Early Modern English surprising: read it as a proxy, not a quality score.",
        "", ("mean: static at the mean T and P that autodeco used on these prompts (its row's T and P). " if "mean" in report["strategies"] else "")
        + f"tokens: mean generated tokens per sample (fewer than {setup['max_new_tokens']} when the model ends its text). "
        f"Generation: {report['generation_seconds']:.0f} s in all (summed over runs); scoring this run: {report['scoring_seconds']:.0f} s.", "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Quality-diversity: x = 1 - self-BLEU, y = log-perplexity; the human level as a band."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 5))
    human = report["human"]["metrics"]["log_ppl"]
    axis.axhline(human["mean"], color="black", linestyle="--", linewidth=1, label="human continuation (± s.e.)")
    axis.axhspan(human["mean"] - human["stderr"], human["mean"] + human["stderr"], color="black", alpha=0.08)
    for label, result in report["strategies"].items():
        m = result["metrics"]
        color = "tab:orange" if label.startswith("autodeco") else "tab:green" if label == "mean" else "tab:blue"
        axis.errorbar(1 - m["self_bleu"]["mean"], m["log_ppl"]["mean"], xerr=m["self_bleu"]["stderr"], yerr=m["log_ppl"]["stderr"],
                      fmt="o", color=color, capsize=3)
        axis.annotate(label, (1 - m["self_bleu"]["mean"], m["log_ppl"]["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    setup = report["setup"]
    axis.set_xlabel("diversity: 1 − self-BLEU-4 across a prompt's samples (± s.e.)")
    axis.set_ylabel("log-perplexity under the base model, T=1 (± s.e.)\ncloser to the human line = more human-like")
    axis.set_title(f"{setup['model']} · {setup['task']} · {setup['prompts']} prompts × {setup['samples']} samples · {setup['max_new_tokens']} tokens", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    save_png(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--strategies", default=STRATEGIES, help="as autodeco eval's, without greedy and the oracles")
    parser.add_argument("--task", default="shakespeare", help="shakespeare[,split=dev,data=FOLDER,prompt_words=N,...]")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--heads", default="gemma-3-270m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32, help="rows decoded together")
    parser.add_argument("--score-batch-size", type=int, default=16, help="continuations scored together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.prompts < 1 or args.samples < 2 or args.max_new_tokens < 1:
        parser.error("--prompts and --max-new-tokens must be at least 1, --samples at least 2 (self-BLEU compares samples)")
    started = time.perf_counter()
    console = Console(stderr=True)
    try:
        strategies = parse_strategies(args.strategies)
        unfit = [s.label for s in strategies if (s.decoding is None and s.kind != "mean") or (s.decoding is not None and s.decoding.deterministic)]
        if unfit:
            raise AutoDecoError(f"strategies {', '.join(unfit)} do not fit here: greedy gives one sample per prompt, and the oracles need a pass@1")
        task = load_task(args.task)
        if not isinstance(task, ShakespeareTask):
            raise AutoDecoError(f"task {args.task!r} keeps no human continuation; use the shakespeare task")
        problems = task.problems()[: args.prompts]
        with console.status(f"Loading {args.model} with heads {args.heads} ..."):
            model, tokenizer, settings = load(args)
        evaluator = Evaluator(model, tokenizer, settings, args.out, console)
        plan = EvalPlan(tasks=[task], strategies=strategies, samples=args.samples, batch_size=args.batch_size)
        generated = generate_all(evaluator, task, problems, plan)
        scoring = time.perf_counter()
        store = ScoreStore(args.out / SCORES_NAME)
        all_records = [r for _, records in generated.values() for r in records]
        ids = score_all(model, tokenizer, evaluator, task, problems, all_records, store, args.max_new_tokens, args.score_batch_size, console)
        scoring = time.perf_counter() - scoring
    except AutoDecoError as error:
        raise SystemExit(f"error: {error}") from None

    command = "python benchmarks/evidence/open_ended.py " + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items())
    report = {
        "setup": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "task": task.name, "prompts": len(problems),
                  "prompt_words": f"{min(len(p.question.split()) for p in problems)}-{max(len(p.question.split()) for p in problems)} words", "dtype": str(model.dtype),
                  "data": f"shakespeare=={DATA_VERSION} source archive, {task.folder}", "command": command},
        "machine": machine_info(),
        "versions": {"autodeco": version("autodeco"), "nltk": version("nltk")},
        "strategies": {label: {"params": decoding.settings(), **measure(problems, records, ids, store)} for label, (decoding, records) in generated.items()},
        "human": measure_human(problems, ids, store, tokenizer),
        "generation_seconds": sum(r["seconds"] for r in all_records),
        "scoring_seconds": scoring,
        "wall_seconds": time.perf_counter() - started,
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", args.out / RESULTS_NAME)
    atomic_write_text(markdown(report), args.out / REPORT_NAME)
    plot(report, args.out / PLOT_NAME)
    print(markdown(report))
    print(f"wrote {args.out / RESULTS_NAME}, {REPORT_NAME} and {PLOT_NAME}")


if __name__ == "__main__":
    main()
