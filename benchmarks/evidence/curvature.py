"""Token-level temperature or just a better mean? The teacher-forced curvature check (issue 20).

SimpleDeco ("Token-Level Control or Just a Better Mean?") finds static decoding at the mean of
AutoDeco's predicted T as good as AutoDeco, and argues from concavity: the teacher-forced
log-likelihood l_t(beta) = beta z_y - logsumexp(beta z) is concave in beta = 1/T, so varying beta
from token to token pays a curvature penalty that only an informative variation can repay. This
script measures both parts on our model and data:

    dLL = sum_t [l_t(beta_t) - l_t(b)] = sum_t l'_t(b) (beta_t - b)  +  exact remainder (<= 0)
                                         first-order ("informative")    curvature penalty

with z the base logits at each answer position, beta_t = 1/T_t from the heads, and three constants
b: the mean of beta_t, 1/mean(T_t) (what the ``mean`` strategy uses), and the best constant beta
(a 1-D search on the concave sum). Since the heads' level and their variation are separate
questions, the heads are also rescaled to their best level (c * beta_t with the best c, i.e. T_t
times a user multiplier 1/c), and their variation shrunk to its best amount (b + lam (beta_t -
mean beta_t), the best b and lam), each compared with the best constant. Math:
:mod:`autodeco.evaluation.curvature`.

Sequences, per task (reasoning_gym, dev split, the task's own few-shot prompt, plain text):
- ``reference``: the reference answer formatted as the few-shot answers are (" " + answer, or the
  worked line for ``worked=true``) and Gemma's "\\n\\n" (token 108) that ends an answer;
- ``sampled``: the base model's own answers sampled at T=1, P=1 (``--samples`` per problem; the
  runner's resumable samples in OUT/samples), each with the sampled token that ended it;
- ``sampled-correct``: those of them the task's scorer accepts.
Teacher forcing runs the few-shot prefix once per task and each problem's question once (KV
caches), no grad, float32; the logits at answer positions are kept as their top ``--top-k``
values plus 1/32-wide bins of the rest (float64), on which every l, l', l'' is evaluated; a sample
of tokens is checked against the full vocabulary (``audit`` in results.json).

    python benchmarks/evidence/curvature.py                                   # 200 problems a task
    python benchmarks/evidence/curvature.py --problems 5 --samples 1 --out /tmp/curv
    python benchmarks/evidence/curvature.py --heads gemma-3-270m --heads path/to/other-heads

On a CPU, run it with ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184``; ``--threads``
is 1 by default, which on 2 cores shared with other jobs ran the forward passes ~15x faster than 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autodeco.engine import encode_prompts
from autodeco.errors import AutoDecoError
from autodeco.evaluation.curvature import best_constant_beta, best_shrinkage, compress_logits, decompose, likelihood_terms, pearson
from autodeco.evaluation.runner import EvalPlan, EvalSettings, Evaluator, file_sha256
from autodeco.evaluation.strategies import static_decoding
from autodeco.evaluation.tasks import Problem, Task, load_task, parse_task_spec
from autodeco.evaluation.tasks.worked import worked_answer
from autodeco.heads import AutoDecoHeads
from autodeco.io import atomic_write_text, prepare_output_dir
from autodeco.kv_cache import forward_with_cache
from autodeco.modeling import AutoDecoModelForCausalLM, load_heads, logits_from_hidden
from autodeco.models import resolve_heads
from autodeco.training.self_data import completion_ids

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import machine_info, machine_line  # noqa: E402  (benchmarks/machine.py)

OUT = Path(__file__).resolve().parent.parent / "results" / "evidence-gemma-3-270m" / "curvature"
TASKS = (
    "reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1",
    "reasoning_gym:letter_counting",
    "reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1,worked=true",
)
END_TEXT = "\n\n"  # what ends a few-shot answer: Gemma's token 108
SETS = ("reference", "sampled", "sampled-correct")
BETA_RANGE = (1e-2, 1e2)  # the best constant beta is searched in [0.01, 100] (T from 100 to 0.01)
SCALE_RANGE = (1e-3, 1e3)  # the best factor c on the heads' beta_t (T_t / c: a user temperature multiplier 1/c)
RESULTS_NAME, REPORT_NAME = "results.json", "report.md"


# ---------------------------------------------------------------------------------------- sequences
@dataclass
class Sequence:
    """One teacher-forced answer: its kind (reference or sampled), its tokens, whether its last
    token is the one that ended it (the end-of-answer token), and whether it is correct."""

    task: str
    problem: str
    kind: str
    sample: int
    answer_ids: list[int]
    ends: bool
    correct: bool

    def sets(self) -> list[str]:
        if self.kind == "reference":
            return ["reference"]
        return ["sampled", "sampled-correct"] if self.correct else ["sampled"]


def dev_task(spec: str) -> Task:
    """The task on its dev split (``split=dev`` added unless the spec names a split)."""
    _, _, options = parse_task_spec(spec)
    return load_task(spec if "split" in options else f"{spec},split=dev")


def reference_text(task: Task, problem: Problem) -> str:
    """The reference answer as the task's few-shot answers are written after "Answer:"."""
    if getattr(task, "worked", False):
        return " " + worked_answer(task.dataset_name, problem.reference)
    return " " + str(problem.reference["answer"])


def reference_ids(tokenizer: Any, prompt: str, prompt_ids: list[int], text: str, end_id: int) -> tuple[list[int], bool]:
    """The answer's token ids followed by the end token, as the model would see them after the
    prompt; and whether tokenising prompt + answer + end in one piece gives the same ids."""
    alone = tokenizer(text, add_special_tokens=False).input_ids + [end_id]
    joint = tokenizer(prompt + text + END_TEXT).input_ids
    return alone, joint == prompt_ids + alone


# ---------------------------------------------------------------------------------------- teacher forcing
def temperatures(heads: AutoDecoHeads, hidden: torch.Tensor) -> torch.Tensor:
    """T of the heads at these final hidden states (what ``AutoDecoHeads.forward`` returns first)."""
    temperature = heads.temp_head(hidden)
    return temperature if heads.enable_temperature_head else torch.ones_like(temperature)


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token."""
    length, shortest = 0, min(len(r) for r in rows)
    while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


@torch.no_grad()
def answer_hidden(llm: Any, prefix_cache: Any, suffix: list[int], answers: list[list[int]]) -> list[torch.Tensor]:
    """Final hidden states ``[len(answer), H]`` at the positions that predict each answer's tokens,
    after the prompt = (the prefix behind ``prefix_cache``) + ``suffix``. The question runs once;
    its cache is repeated for the answers, right-padded (no real token sees a pad)."""
    decoder, device = llm.get_decoder(), llm.get_output_embeddings().weight.device
    out, cache = forward_with_cache(decoder, copy.deepcopy(prefix_cache), input_ids=torch.tensor([suffix], device=device), use_cache=True)
    last = out.last_hidden_state[0, -1:]
    width = max(len(a) for a in answers)
    if width == 1:
        return [last for _ in answers]
    ids = torch.zeros((len(answers), width - 1), dtype=torch.long)
    for row, answer in enumerate(answers):
        ids[row, : len(answer) - 1] = torch.tensor(answer[:-1])
    cache.batch_repeat_interleave(len(answers))
    past = cache.get_seq_length()
    mask = torch.ones((len(answers), past + width - 1), dtype=torch.long, device=device)
    states = forward_with_cache(decoder, cache, input_ids=ids.to(device), attention_mask=mask, use_cache=True)[0].last_hidden_state
    return [torch.cat([last, states[row, : len(answer) - 1]]) for row, answer in enumerate(answers)]


@dataclass
class TaskTokens:
    """Every answer token of a task: its compressed logits and what each heads predicted there."""

    values: list[torch.Tensor] = field(default_factory=list)  # per problem [n, A] float64
    log_weights: list[torch.Tensor] = field(default_factory=list)
    target_logit: list[torch.Tensor] = field(default_factory=list)  # [n] float64
    temperature: list[torch.Tensor] = field(default_factory=list)  # [n, heads] float32 as predicted
    is_end: list[torch.Tensor] = field(default_factory=list)  # [n] bool
    is_argmax: list[torch.Tensor] = field(default_factory=list)
    sequence: list[torch.Tensor] = field(default_factory=list)  # [n] index into the task's sequences

    def stacked(self) -> dict[str, torch.Tensor]:
        width = max(v.shape[1] for v in self.values)
        pad = lambda t, fill: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)  # noqa: E731
        return {
            "values": torch.cat([pad(v, 0.0) for v in self.values]), "log_weights": torch.cat([pad(w, -math.inf) for w in self.log_weights]),
            "target_logit": torch.cat(self.target_logit), "temperature": torch.cat(self.temperature).double(),
            "is_end": torch.cat(self.is_end), "is_argmax": torch.cat(self.is_argmax), "sequence": torch.cat(self.sequence),
        }


@torch.no_grad()
def teacher_force(llm: Any, heads: list[AutoDecoHeads], prompts: dict[str, list[int]], sequences: list[Sequence], args: argparse.Namespace,
                  progress: Progress, audit: dict[str, Any]) -> TaskTokens:
    """Run one task's sequences; fill ``audit`` with the compression's largest errors on a sample of tokens."""
    by_problem: dict[str, list[int]] = {}
    for index, sequence in enumerate(sequences):
        by_problem.setdefault(sequence.problem, []).append(index)
    prefix_length = common_prefix([prompts[p] for p in by_problem])
    device = llm.get_output_embeddings().weight.device
    first = next(iter(by_problem))
    _, prefix_cache = forward_with_cache(llm.get_decoder(), None, input_ids=torch.tensor([prompts[first][:prefix_length]], device=device), use_cache=True)
    tokens = TaskTokens()
    bar = progress.add_task(f"teacher forcing · {sequences[0].task}", total=len(by_problem))
    counter = 0
    for problem, indices in by_problem.items():
        answers = [sequences[i].answer_ids for i in indices]
        hidden = torch.cat(answer_hidden(llm, prefix_cache, prompts[problem][prefix_length:], answers)).float()
        logits = logits_from_hidden(llm, hidden).float()
        targets = torch.tensor([t for a in answers for t in a], device=logits.device)
        target_logit = logits.gather(-1, targets[:, None])[:, 0].double()
        temperature = torch.stack([temperatures(h, hidden) for h in heads], dim=-1).float()
        values, log_weights = compress_logits(logits, top_k=args.top_k, bin_width=args.bin_width)
        ends = torch.tensor([sequences[i].ends and k == len(a) - 1 for i, a in zip(indices, answers) for k in range(len(a))])
        tokens.values.append(values.cpu())
        tokens.log_weights.append(log_weights.cpu())
        tokens.target_logit.append(target_logit.cpu())
        tokens.temperature.append(temperature.cpu())
        tokens.is_end.append(ends)
        tokens.is_argmax.append((logits.argmax(-1) == targets).cpu())
        tokens.sequence.append(torch.tensor([i for i, a in zip(indices, answers) for _ in a]))
        picked = [r for r in range(len(targets)) if (counter + r) % args.audit_every == 0]
        counter += len(targets)
        if picked:  # the compressed vocabulary against the full one, at each heads' beta and at beta = 1
            betas = torch.cat([1.0 / temperature[picked].double(), torch.ones(len(picked), 1, dtype=torch.float64)], dim=-1)
            exact = likelihood_terms(logits[picked], target_logit[picked], betas)
            compressed = likelihood_terms(values[picked], target_logit[picked], betas, log_weights[picked])
            audit["tokens"] += len(picked)
            for name in ("ell", "d1", "d2"):
                error = (getattr(exact, name) - getattr(compressed, name)).abs().max().item()
                audit[f"max_abs_error_{name}"] = max(audit[f"max_abs_error_{name}"], error)
        progress.advance(bar)
    return tokens


@torch.no_grad()
def check_against_forward(model: AutoDecoModelForCausalLM, prompt_ids: list[int], sequence: Sequence, prefix_length: int) -> dict[str, float]:
    """The cached route's logits and T (heads of ``model``) against one plain forward of the model."""
    answer = sequence.answer_ids
    ids = torch.tensor([prompt_ids + answer], device=model.device)
    out = model(input_ids=ids, logits_to_keep=len(answer) + 1)
    plain_logits, plain_t = out.logits[0, :-1].float(), out.temperature[0, :-1].float()
    _, cache = forward_with_cache(model.llm.get_decoder(), None, input_ids=ids[:, :prefix_length], use_cache=True)
    hidden = answer_hidden(model.llm, cache, prompt_ids[prefix_length:], [answer])[0].float()
    return {"max_abs_logit_diff": (logits_from_hidden(model.llm, hidden).float() - plain_logits).abs().max().item(),
            "max_abs_T_diff": (temperatures(model.heads, hidden) - plain_t).abs().max().item(), "tokens": len(answer)}


# ---------------------------------------------------------------------------------------- analysis
def _bootstrap(per_sequence: torch.Tensor, tokens: torch.Tensor, draws: int, seed: int) -> list[float]:
    """95% percentile interval of sum(per_sequence) / sum(tokens), resampling sequences."""
    if per_sequence.numel() < 2 or draws < 1:
        return [math.nan, math.nan]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, per_sequence.numel(), (draws, per_sequence.numel()), generator=generator)
    ratios = per_sequence[picks].sum(-1) / tokens[picks].sum(-1)
    return torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()


def _mean_sd(values: torch.Tensor) -> dict[str, float]:
    return {"mean": values.mean().item() if values.numel() else math.nan, "sd": values.std().item() if values.numel() > 1 else math.nan}


def analyse_set(data: dict[str, torch.Tensor], rows: torch.Tensor, heads_index: int, best_beta: float, best_where: str,
                draws: int, seed: int) -> dict[str, Any]:
    """Every number of one (task, set, heads): the heads' beta_t against each constant, and the
    heads rescaled to their best level (c * beta_t, the best c) against the best constant."""
    values, log_weights, target = data["values"][rows], data["log_weights"][rows], data["target_logit"][rows]
    temperature = data["temperature"][rows, heads_index]
    beta_t = 1.0 / temperature
    is_end, sequence = data["is_end"][rows], data["sequence"][rows]
    n = rows.numel()
    _, seq_index = torch.unique(sequence, return_inverse=True)
    sequences = int(seq_index.max().item()) + 1
    per_seq_tokens = torch.zeros(sequences, dtype=torch.float64).index_add_(0, seq_index, torch.ones(n, dtype=torch.float64))

    def scaled_derivatives(c: float) -> tuple[float, float]:  # of sum_t l_t(c beta_t) in c: concave too
        terms = likelihood_terms(values, target, c * beta_t, log_weights)
        return (beta_t * terms.d1).sum().item(), (beta_t.square() * terms.d2).sum().item()

    scale, scale_where = best_constant_beta(scaled_derivatives, *SCALE_RANGE)
    level, shrink = best_shrinkage(lambda betas: likelihood_terms(values, target, betas, log_weights), beta_t,
                                   start=best_beta if math.isfinite(best_beta) else 1.0)
    constants = {"mean_beta": beta_t.mean().item(), "inv_mean_T": 1.0 / temperature.mean().item(), "best_beta": best_beta}
    columns = {"heads": beta_t, **{name: torch.full_like(beta_t, c) for name, c in constants.items()}, "T=1": torch.ones_like(beta_t),
               "rescaled_heads": scale * beta_t, "shrunk_heads": level + shrink * (beta_t - beta_t.mean())}
    terms = likelihood_terms(values, target, torch.stack(list(columns.values()), dim=-1), log_weights)
    at = {name: k for k, name in enumerate(columns)}

    def compare(variable: str, constant_name: str) -> dict[str, Any]:
        constant, k = constants[constant_name], at[constant_name]
        parts = decompose(terms.ell[:, at[variable]], terms.ell[:, k], terms.d1[:, k], columns[variable], constant)
        totals, end, answer = parts.totals(), parts.totals(is_end), parts.totals(~is_end)
        per_seq = {key: torch.zeros(sequences, dtype=torch.float64).index_add_(0, seq_index, getattr(parts, key)) for key in ("delta", "first_order")}
        return {
            "beta": constant, "T": 1.0 / constant, **({"where": best_where} if constant_name == "best_beta" else {}),
            "per_token": {key: value / n for key, value in totals.items()},
            "ci95_per_token": {key: _bootstrap(per_seq[key], per_seq_tokens, draws, seed) for key in ("delta", "first_order")},
            "sums": totals, "end_tokens": end, "answer_tokens": answer,
            "end_share_of_delta": end["delta"] / totals["delta"] if totals["delta"] else math.nan,
            "corr_beta_d1": pearson(columns[variable], terms.d1[:, k]),
            "curvature_tokens_above_zero": int((parts.curvature > 1e-9).sum().item()),
            "second_order_estimate_per_token": (0.5 * terms.d2[:, k] * (columns[variable] - constant).square()).mean().item(),
        }

    return {
        "sequences": sequences, "tokens": n, "end_tokens": int(is_end.sum().item()), "argmax_share": data["is_argmax"][rows].double().mean().item(),
        "T": _mean_sd(temperature), "T_answer_tokens": _mean_sd(temperature[~is_end]), "T_end_tokens": _mean_sd(temperature[is_end]),
        "beta": _mean_sd(beta_t),
        "ll_per_token": {name: terms.ell[:, k].mean().item() for name, k in at.items()},
        **{name: compare("heads", name) for name in constants},
        "rescaled_heads": {"c": scale, "where": scale_where, "T_multiplier": 1.0 / scale, "mean_T": (temperature / scale).mean().item(),
                           "vs_best_beta": compare("rescaled_heads", "best_beta")},
        "shrunk_heads": {"level_beta": level, "level_T": 1.0 / level, "lambda": shrink, "in_sample_optimism_per_token": 0.5 / n,
                         "vs_best_beta": compare("shrunk_heads", "best_beta")},
    }


def best_beta_of(data: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[float, str]:
    """The constant beta maximising the set's summed log-likelihood (it does not depend on the heads)."""
    values, log_weights, target = data["values"][rows], data["log_weights"][rows], data["target_logit"][rows]

    def derivatives(beta: float) -> tuple[float, float]:
        terms = likelihood_terms(values, target, beta, log_weights)
        return terms.d1.sum().item(), terms.d2.sum().item()

    return best_constant_beta(derivatives, *BETA_RANGE)


# ---------------------------------------------------------------------------------------- report
def _f(value: float, digits: int = 4, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _percent(share: float) -> str:
    return "–" if math.isnan(share) else f"{round(share * 100):+d}%"


def _short(task: str) -> str:
    family, argument, options = parse_task_spec(task)
    shown = [f"{k}={v}" for k, v in options.items() if k in ("worked",)]
    return (argument or family) + (f" ({', '.join(shown)})" if shown else "")


def markdown(report: dict[str, Any]) -> str:
    setup = report["setup"]
    lines = [
        "# Token-level T or just a better mean? Teacher-forced curvature (issue 20)", "",
        f"`{setup['command']}`", "",
        f"Model {setup['model']} ({setup['dtype']}), tasks on the dev split with their own few-shot prompts, up to {setup['problems']} problems "
        f"a task (" + ", ".join(f"{_short(t)} {n}" for t, n in setup["tasks_run"].items()) + f"); sampled answers: {setup['samples']} a problem at T=1, P=1 (seed {setup['seed']}, at most {setup['max_new_tokens']} tokens). "
        f"Wall time {report['wall_seconds']:.0f} s (sampling {report['timings']['sampling_s']:.0f} s, teacher forcing "
        f"{report['timings']['teacher_forcing_s']:.0f} s, analysis {report['timings']['analysis_s']:.0f} s).", "",
        machine_line(report["machine"]), "",
        "Per token, in nats: dLL = mean over tokens of l_t(beta_t) - l_t(b), with l_t(beta) = beta z_y - logsumexp(beta z), "
        "beta_t = 1/T_t from the heads, split exactly into the first-order term l'_t(b)(beta_t - b) (the covariance of beta_t "
        "with l'_t(b) when b = mean beta: informative variation) and the remainder (<= 0 by concavity: the curvature penalty). "
        "b = mean of beta_t, or the best constant beta for the set (searched in "
        f"[{BETA_RANGE[0]}, {BETA_RANGE[1]}]; `>=` when it sits at the bound). corr = Pearson corr(beta_t, l'_t(mean beta)): "
        "does the head sharpen where sharpening helps? Brackets: 95% bootstrap over sequences (b held fixed). "
        "end share = the part of dLL (vs mean beta) on the end-of-answer tokens.", "",
    ]
    for heads_name, heads in report["heads"].items():
        lines += [f"## Heads `{heads_name}` (sha256 {heads['sha256'][:12]})", "",
                  "| task | set | seqs | tokens | mean T (sd) | dLL/tok vs mean beta [95%] | first-order | curvature | dLL/tok vs best beta | best beta (T) | corr | end share |",
                  "|---|---|---:|---:|---|---|---:|---:|---:|---|---:|---:|"]
        for task, sets in heads["tasks"].items():
            for name, row in sets.items():
                if row is None:
                    lines.append(f"| {_short(task)} | {name} | 0 | 0 | – | – | – | – | – | – | – | – |")
                    continue
                mean, best = row["mean_beta"], row["best_beta"]
                low, high = mean["ci95_per_token"]["delta"]
                at = ">=" if row["best_beta"]["where"] == "at_high" else ""
                lines.append(
                    f"| {_short(task)} | {name} | {row['sequences']} | {row['tokens']} | {row['T']['mean']:.3f} ({row['T']['sd']:.3f}) | "
                    f"{_f(mean['per_token']['delta'])} [{_f(low)}, {_f(high)}] | {_f(mean['per_token']['first_order'])} | "
                    f"{_f(mean['per_token']['curvature'])} | {_f(best['per_token']['delta'])} | {at}{best['beta']:.3g} ({best['T']:.3g}) | "
                    f"{_f(mean['corr_beta_d1'], 3)} | {_percent(mean['end_share_of_delta'])} |"
                )
        lines += ["", "Against 1/mean(T) (the `mean` strategy's constant), the split by token kind, and the log-likelihood levels:", "",
                  "| task | set | 1/mean T | dLL/tok vs 1/mean T | first-order | curvature | vs best: first-order | curvature | dLL on end tokens / answer tokens (vs mean beta, nats per seq) | mean T end / answer tokens | LL/tok heads | at mean beta | at best beta | at T=1 | argmax share |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for task, sets in heads["tasks"].items():
            for name, row in sets.items():
                if row is None:
                    continue
                inv, best, mean, ll = row["inv_mean_T"], row["best_beta"], row["mean_beta"], row["ll_per_token"]
                per_seq = lambda v: v / row["sequences"]  # noqa: E731
                lines.append(
                    f"| {_short(task)} | {name} | {inv['beta']:.3g} | {_f(inv['per_token']['delta'])} | {_f(inv['per_token']['first_order'])} | "
                    f"{_f(inv['per_token']['curvature'])} | {_f(best['per_token']['first_order'])} | {_f(best['per_token']['curvature'])} | "
                    f"{_f(per_seq(mean['end_tokens']['delta']))} / {_f(per_seq(mean['answer_tokens']['delta']))} | "
                    f"{row['T_end_tokens']['mean']:.3f} / {row['T_answer_tokens']['mean']:.3f} | {_f(ll['heads'])} | {_f(ll['mean_beta'])} | "
                    f"{_f(ll['best_beta'])} | {_f(ll['T=1'])} | {row['argmax_share']:.2f} |"
                )
        lines += ["", "The heads at their best level: c * beta_t with the c that maximises the set's log-likelihood (T_t times the "
                  "multiplier 1/c, as a user temperature would scale them), against the best constant beta. Positive: the token-level "
                  "variation carries information no constant has, once its level is right.", "",
                  "| task | set | best multiplier on T | mean T rescaled | LL/tok rescaled heads | LL/tok best constant (T) | dLL/tok [95%] | first-order | curvature | corr(beta_t, l'_t(best)) |",
                  "|---|---|---:|---:|---:|---|---|---:|---:|---:|"]
        for task, sets in heads["tasks"].items():
            for name, row in sets.items():
                if row is None:
                    continue
                scaled, ll = row["rescaled_heads"], row["ll_per_token"]
                vs = scaled["vs_best_beta"]
                low, high = vs["ci95_per_token"]["delta"]
                lines.append(
                    f"| {_short(task)} | {name} | {scaled['T_multiplier']:.3g} | {scaled['mean_T']:.3f} | {_f(ll['rescaled_heads'])} | "
                    f"{_f(ll['best_beta'])} ({row['best_beta']['T']:.3g}) | {_f(vs['per_token']['delta'])} [{_f(low)}, {_f(high)}] | "
                    f"{_f(vs['per_token']['first_order'])} | {_f(vs['per_token']['curvature'])} | {_f(vs['corr_beta_d1'], 3)} |"
                )
        lines += ["", "How much of the heads' variation is worth keeping: b + lam * (beta_t - mean beta_t) with the best (b, lam) "
                  "(lam = 1: the heads' own spread around level b; lam = 0: the best constant), against the best constant. The gain "
                  "is in-sample and never negative; one fitted parameter is worth about 0.5 nats over the whole set by chance "
                  "(the last column, per token).", "",
                  "| task | set | best lam | level b (T) | LL/tok shrunk heads | dLL/tok vs best constant [95%] | first-order | curvature | chance level |",
                  "|---|---|---:|---|---:|---|---:|---:|---:|"]
        for task, sets in heads["tasks"].items():
            for name, row in sets.items():
                if row is None:
                    continue
                shrunk = row["shrunk_heads"]
                vs = shrunk["vs_best_beta"]
                low, high = vs["ci95_per_token"]["delta"]
                lines.append(
                    f"| {_short(task)} | {name} | {shrunk['lambda']:.3f} | {shrunk['level_beta']:.3g} ({shrunk['level_T']:.3g}) | "
                    f"{_f(row['ll_per_token']['shrunk_heads'])} | {_f(vs['per_token']['delta'])} [{_f(low)}, {_f(high)}] | "
                    f"{_f(vs['per_token']['first_order'])} | {_f(vs['per_token']['curvature'])} | {shrunk['in_sample_optimism_per_token']:.4f} |"
                )
        lines.append("")
    audit, checks = report["audit"], report["checks"]
    lines += [
        "## Checks", "",
        f"- Compressed vocabulary (top {report['setup']['top_k']} logits exact, the rest in bins of {report['setup']['bin_width']:.4g}) "
        f"against the full one on {audit['tokens']} tokens (every {report['setup']['audit_every']}th), at each heads' beta_t and at beta = 1: "
        f"largest |error| of l {audit['max_abs_error_ell']:.1e}, l' {audit['max_abs_error_d1']:.1e}, l'' {audit['max_abs_error_d2']:.1e}.",
        "- The cached teacher-forcing route against one plain forward of the AutoDeco model per task: largest |logit diff| "
        f"{max(c['max_abs_logit_diff'] for c in checks['forward'].values()):.1e}, largest |T diff| "
        f"{max(c['max_abs_T_diff'] for c in checks['forward'].values()):.1e}.",
        "- Reference answers: " + "; ".join(f"{_short(t)}: {c['scored_correct']}/{c['references']} accepted by the scorer, "
                                            f"{c['tokenisation_mismatches']} tokenised differently inside the prompt" for t, c in checks["references"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="task specs (split=dev is added unless one is named)")
    parser.add_argument("--problems", type=int, default=200, help="dev problems per task (fewer when the split has fewer)")
    parser.add_argument("--heads", action="append", default=None, help="heads to report (repeatable; default: the shipped gemma-3-270m)")
    parser.add_argument("--samples", type=int, default=2, help="sampled answers per problem (T=1, P=1)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32, help="rows sampled together")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=256, help="logits kept exactly per position")
    parser.add_argument("--bin-width", type=float, default=1 / 32, help="width of the bins the other logits are grouped in")
    parser.add_argument("--audit-every", type=int, default=16, help="check every Nth token against the full vocabulary")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over sequences")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a CPU shared with other jobs)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.heads = args.heads or ["gemma-3-270m"]
    if args.problems < 1 or args.samples < 0 or args.max_new_tokens < 1 or args.audit_every < 1:
        parser.error("--problems, --max-new-tokens and --audit-every must be at least 1, --samples at least 0")
    started = time.perf_counter()
    console = Console(stderr=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    try:
        prepare_output_dir(args.out, overwrite=True, what="results")
        tasks = [dev_task(spec) for spec in args.tasks]
        with console.status(f"Loading {args.model} (float32) with heads {', '.join(args.heads)} ..."):
            model = AutoDecoModelForCausalLM.from_pretrained(args.heads[0], base=args.model, dtype=torch.float32)
            tokenizer = model.load_tokenizer()
            heads = [model.heads] + [load_heads(h).to(model.device).float() for h in args.heads[1:]]
            for name, h in zip(args.heads, heads):
                if h.hidden_size != model.llm.config.get_text_config().hidden_size:
                    raise AutoDecoError(f"heads {name} were made for another base (hidden size {h.hidden_size})")
        end_ids = tokenizer(END_TEXT, add_special_tokens=False).input_ids
        if len(end_ids) != 1:
            raise AutoDecoError(f"this tokenizer writes {END_TEXT!r} as {end_ids}, not one token: the end-of-answer token is Gemma's")
        end_id = end_ids[0]
        loaded = time.perf_counter()

        # sampled answers, through the resumable runner
        weights = resolve_heads(args.heads[0]) / "model.safetensors"
        settings = EvalSettings(model=args.model, heads=str(args.heads[0]), heads_sha256=file_sha256(weights) if weights.is_file() else None,
                                chat=False, max_new_tokens=args.max_new_tokens, seed=args.seed, dtype=str(model.dtype))
        evaluator = Evaluator(model, tokenizer, settings, args.out / "samples", console)
        plan = EvalPlan(tasks=tasks, strategies=[], samples=max(args.samples, 1), batch_size=args.batch_size)
        problems = {task.name: task.problems()[: args.problems] for task in tasks}
        records = {task.name: evaluator.samples(task, problems[task.name], static_decoding(1.0, 1.0), plan) if args.samples else [] for task in tasks}
        sampled = time.perf_counter()

        # sequences and teacher forcing
        checks: dict[str, Any] = {"references": {}, "forward": {}}
        audit = {"tokens": 0, "max_abs_error_ell": 0.0, "max_abs_error_d1": 0.0, "max_abs_error_d2": 0.0}
        data, all_sequences = {}, {}
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        with progress:
            for task in tasks:
                prompts_text = {p.id: evaluator.prompt(task, p)[0] for p in problems[task.name]}
                prompts = {pid: encode_prompts(tokenizer, [text], chat=False)[0] for pid, text in prompts_text.items()}
                sequences, mismatches, accepted = [], 0, 0
                for problem in problems[task.name]:
                    text = reference_text(task, problem)
                    ids, same = reference_ids(tokenizer, prompts_text[problem.id], prompts[problem.id], text, end_id)
                    mismatches += not same
                    accepted += task.score(problem, text).correct
                    sequences.append(Sequence(task.name, problem.id, "reference", 0, ids, True, True))
                for record in records[task.name][: len(problems[task.name]) * args.samples]:
                    ids = completion_ids(record)
                    if ids:
                        sequences.append(Sequence(task.name, record["problem"], "sampled", record["sample"], ids,
                                                  record.get("stop_token_id") is not None, bool(record["correct"])))
                checks["references"][task.name] = {"references": len(problems[task.name]), "scored_correct": accepted, "tokenisation_mismatches": mismatches}
                prefix_length = common_prefix(list(prompts.values()))
                checks["forward"][task.name] = check_against_forward(model, prompts[sequences[0].problem], sequences[0], prefix_length)
                data[task.name] = teacher_force(model.llm, heads, prompts, sequences, args, progress, audit).stacked()
                all_sequences[task.name] = sequences
        forced = time.perf_counter()

        # analysis
        report_heads: dict[str, Any] = {}
        best: dict[tuple[str, str], tuple[float, str]] = {}
        for task in tasks:
            for set_name in SETS:
                in_set = torch.tensor([set_name in s.sets() for s in all_sequences[task.name]])
                rows = torch.nonzero(in_set[data[task.name]["sequence"]]).squeeze(-1)
                best[(task.name, set_name)] = best_beta_of(data[task.name], rows) if rows.numel() else (math.nan, "none")
        for heads_index, heads_name in enumerate(args.heads):
            path = resolve_heads(heads_name) / "model.safetensors"
            tasks_out: dict[str, Any] = {}
            for task in tasks:
                tasks_out[task.name] = {}
                for set_name in SETS:
                    in_set = torch.tensor([set_name in s.sets() for s in all_sequences[task.name]])
                    rows = torch.nonzero(in_set[data[task.name]["sequence"]]).squeeze(-1)
                    tasks_out[task.name][set_name] = (
                        analyse_set(data[task.name], rows, heads_index, *best[(task.name, set_name)], args.bootstrap, args.seed) if rows.numel() else None
                    )
            report_heads[heads_name] = {"path": str(resolve_heads(heads_name)), "sha256": file_sha256(path) if path.is_file() else "", "tasks": tasks_out}
        finished = time.perf_counter()
    except AutoDecoError as error:
        raise SystemExit(f"error: {error}") from None

    shown = {k: v for k, v in vars(args).items() if k not in ("tasks", "heads", "out")}
    command = ("python benchmarks/evidence/curvature.py --tasks " + " ".join(shlex.quote(t) for t in args.tasks) + " "
               + " ".join(f"--heads {shlex.quote(h)}" for h in args.heads) + " "
               + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in shown.items()) + f" --out {shlex.quote(str(args.out))}")
    report = {
        "setup": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "dtype": str(model.dtype), "command": command,
                  "tasks_run": {t.name: len(problems[t.name]) for t in tasks}, "end_token_id": end_id, "beta_search_range": list(BETA_RANGE),
                  "sampler": "static T=1, P=1 (the base model's own distribution), via autodeco's Evaluator"},
        "machine": machine_info(),
        "versions": {"autodeco": version("autodeco"), "torch": torch.__version__, "transformers": version("transformers"),
                     "reasoning-gym": version("reasoning-gym")},
        "checks": checks, "audit": audit, "heads": report_heads,
        "timings": {"load_s": loaded - started, "sampling_s": sampled - loaded, "teacher_forcing_s": forced - sampled, "analysis_s": finished - forced},
        "wall_seconds": time.perf_counter() - started,
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", args.out / RESULTS_NAME)
    atomic_write_text(markdown(report), args.out / REPORT_NAME)
    print(markdown(report))
    print(f"wrote {args.out / RESULTS_NAME} and {args.out / REPORT_NAME}")


if __name__ == "__main__":
    main()
