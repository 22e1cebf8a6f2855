"""Metrics over sample records: pure functions, no I/O.

pass@1 is the mean over problems of each problem's share of correct samples; its standard error is
the standard deviation of those shares over the square root of the number of problems (problems are
the unit of sampling; the samples of one problem are not independent evidence). Majority-vote
accuracy (self-consistency, Wang et al., 2023) scores each problem by its most frequent answer.

Strategies are compared with a baseline problem by problem: every strategy samples a given problem
and sample with the same seed, so the paired differences cancel most of the between-problem
variance that unpaired standard errors carry.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)``, as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(samples: int) -> list[int]:
    """The k reported for ``samples`` per problem: powers of two up to it, and itself."""
    ks = [k for k in (2 ** i for i in range(0, 20)) if k <= samples]
    return ks if ks[-1] == samples else [*ks, samples]


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def distinct_n(sequences: Iterable[Sequence[int]], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams over all n-grams of the completions."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def group_by_problem(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records per problem id, in the order given (problems in first-seen order)."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_problem[record["problem"]].append(record)
    return dict(by_problem)


def normalise_answer(answer: str) -> str:
    """An answer as it votes: runs of whitespace made one space, ends stripped, casefolded."""
    return " ".join(answer.split()).casefold()


def majority_correct(samples: Sequence[dict[str, Any]]) -> bool:
    """Self-consistency on one problem's records (in sample order): the most frequent normalised
    answer wins, a tie going to the answer seen first; records without an answer do not vote.
    Right when a record with the winning answer is correct; wrong when nobody voted."""
    votes = Counter(normalise_answer(r["answer"]) for r in samples if r["answer"] is not None)
    if not votes:
        return False
    winner = max(votes, key=votes.__getitem__)  # the first of the most frequent: Counter keeps first-seen order
    return any(r["correct"] for r in samples if r["answer"] is not None and normalise_answer(r["answer"]) == winner)


def problem_scores(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"pass@1": {problem: share correct}, "majority": {problem: 1.0 or 0.0}}``."""
    groups = group_by_problem(records)
    return {
        "pass@1": {pid: sum(r["correct"] for r in group) / len(group) for pid, group in groups.items()},
        "majority": {pid: float(majority_correct(group)) for pid, group in groups.items()},
    }


def bootstrap_interval(differences: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean, resampling the values with replacement ``resamples``
    times from a generator seeded with ``seed`` (reproducible), in blocks of at most ~2M draws."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // values.size)
    means = np.concatenate([
        values[rng.integers(0, values.size, size=(min(block, resamples - start), values.size))].mean(axis=1)
        for start in range(0, resamples, block)
    ])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(values: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, Any]:
    """``values - baseline`` per problem, over the problems both have: the mean difference, its
    standard error (sd / sqrt(n)), z = mean / s.e. (None when the s.e. is 0), a paired bootstrap
    95% interval and the problems where ``values`` is higher (wins), equal (ties) or lower (losses)."""
    differences = [values[pid] - baseline[pid] for pid in values if pid in baseline]
    if not differences:
        raise ValueError("the two strategies share no problem")
    mean, stderr = mean_and_stderr(differences)
    low, high = bootstrap_interval(differences)
    return {
        "diff": mean, "stderr": stderr, "z": mean / stderr if stderr > 0 else None, "ci95": [low, high],
        "wins": sum(d > 0 for d in differences), "ties": sum(d == 0 for d in differences), "losses": sum(d < 0 for d in differences),
    }


def paired_comparison(records: Sequence[dict[str, Any]], baseline_records: Sequence[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """A strategy's records against those of the ``baseline`` strategy on the same task:
    ``{"baseline", "n" (problems both ran), "pass@1", "majority"}``, the last two being the
    :func:`paired_difference` of the share correct and of majority-vote correctness."""
    ours, theirs = problem_scores(records), problem_scores(baseline_records)
    shared = len(ours["pass@1"].keys() & theirs["pass@1"].keys())
    return {"baseline": baseline, "n": shared, **{metric: paired_difference(ours[metric], theirs[metric]) for metric in ours}}


def summarise(records: Sequence[dict[str, Any]], open_ended: bool = False) -> dict[str, Any]:
    """Metrics of one decoding on one task from its sample records (fields: problem, correct,
    answer, answered, extras, token_ids, temperatures, top_ps, seconds), in sample order."""
    by_problem = group_by_problem(records)
    if not by_problem:
        raise ValueError("no records to summarise")
    samples = min(len(group) for group in by_problem.values())
    values = problem_scores(records)
    pass1, stderr = mean_and_stderr(list(values["pass@1"].values()))
    majority, majority_stderr = mean_and_stderr(list(values["majority"].values()))
    temperatures = [t for r in records for t in r["temperatures"]]
    top_ps = [p for r in records for p in r["top_ps"]]
    tokens = sum(len(r["token_ids"]) for r in records)
    seconds = sum(r["seconds"] for r in records)
    summary: dict[str, Any] = {
        "pass@1": pass1,
        "stderr": stderr,
        "majority": majority,
        "majority_stderr": majority_stderr,
        "pass@k": {k: statistics.fmean(pass_at_k(len(g), sum(r["correct"] for r in g), k) for g in by_problem.values()) for k in ks_for(samples)},
        "n_problems": len(by_problem),
        "samples": samples,
        "no_answer": sum(not r["answered"] for r in records),
        "mean_temperature": statistics.fmean(temperatures) if temperatures else 0.0,
        "std_temperature": statistics.pstdev(temperatures) if temperatures else 0.0,
        "mean_top_p": statistics.fmean(top_ps) if top_ps else 0.0,
        "std_top_p": statistics.pstdev(top_ps) if top_ps else 0.0,
        "mean_length": tokens / len(records),
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }
    extras = sorted({name for r in records for name in r.get("extras", {})})
    for name in extras:  # per-task metrics (IFEval loose accuracy), averaged like pass@1
        per_problem = [statistics.fmean(r["extras"].get(name, 0.0) for r in g) for g in by_problem.values()]
        summary[name], summary[f"{name}_stderr"] = mean_and_stderr(per_problem)
    if open_ended:
        ids = [r["token_ids"] for r in records]
        summary["distinct_1"], summary["distinct_2"] = distinct_n(ids, 1), distinct_n(ids, 2)
    return summary
