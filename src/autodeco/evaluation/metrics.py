"""Metrics over sample records: pure functions, no I/O.

pass@1 is the mean over problems of each problem's share of correct samples; its standard error is
the standard deviation of those shares over the square root of the number of problems (problems are
the unit of sampling; the samples of one problem are not independent evidence).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any


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


def summarise(records: Sequence[dict[str, Any]], open_ended: bool = False) -> dict[str, Any]:
    """Metrics of one decoding on one task from its sample records (fields: problem, correct,
    answered, extras, token_ids, temperatures, top_ps, seconds)."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_problem[record["problem"]].append(record)
    if not by_problem:
        raise ValueError("no records to summarise")
    samples = min(len(group) for group in by_problem.values())
    shares = [sum(r["correct"] for r in group) / len(group) for group in by_problem.values()]
    pass1, stderr = mean_and_stderr(shares)
    temperatures = [t for r in records for t in r["temperatures"]]
    top_ps = [p for r in records for p in r["top_ps"]]
    tokens = sum(len(r["token_ids"]) for r in records)
    seconds = sum(r["seconds"] for r in records)
    summary: dict[str, Any] = {
        "pass@1": pass1,
        "stderr": stderr,
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
