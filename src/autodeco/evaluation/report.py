"""The report of an evaluation: ``results.json`` (for other tools), ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autodeco.evaluation.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from autodeco.io import atomic_write_text
from autodeco.plots import pyplot, save_png, token_trace_figure

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"


def results_document(model: str, heads: str | None, tasks: dict[str, dict[str, dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    """The ``results.json`` shape: ``{"model", "heads", "created", "tasks": {TASK: {STRATEGY: metrics}}}``; the
    metrics of every strategy but the baseline hold ``paired``, its per-problem comparison with the baseline
    (:func:`autodeco.evaluation.metrics.paired_comparison`)."""
    return {"model": model, "heads": heads, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra, "tasks": tasks}


TUNED_ON = {"test": "tuned on the test set", "dev": "tuned on dev"}
HIDDEN_PARAMS = ("grid", "sweep", "tuned_on", "dev_task")  # in results.json only


def _cell(value: float, stderr: float | None = None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")


def _paired_cell(difference: dict[str, Any]) -> str:
    """``+0.031 ± 0.012 [+0.008, +0.055]``: mean paired difference ± its s.e. [bootstrap 95% interval]."""
    low, high = difference["ci95"]
    return f"{difference['diff']:+.3f} ± {difference['stderr']:.3f} [{low:+.3f}, {high:+.3f}]"


def markdown_report(document: dict[str, Any]) -> str:
    """One table per task: strategy x metric, the best pass@1 in bold (ties too; none when all
    are 0), ± one standard error, and each strategy's paired difference from the baseline."""
    lines = [f"# Evaluation: {document['model']}", "", f"- heads: {document['heads'] or 'none'}", f"- created: {document['created']}"]
    lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in document.items() if key not in ("model", "heads", "created", "tasks")]
    for task, strategies in document["tasks"].items():
        best = max(m["pass@1"] for m in strategies.values())
        open_ended = any("distinct_2" in m for m in strategies.values())
        extras = sorted({k for m in strategies.values() for k in m if f"{k}_stderr" in m and k != "majority"})  # majority has its column
        paired = next((m["paired"] for m in strategies.values() if "paired" in m), None)
        header = ["strategy", "pass@1", "pass@k", "majority"]
        header += [f"Δ pass@1 vs {paired['baseline']} (paired s.e., 95% bootstrap)", f"Δ majority vs {paired['baseline']}"] if paired else []
        header += ["no answer", "mean T (sd)", "mean P (sd)", "length", "tok/s", *extras]
        header += ["distinct-2"] if open_ended else []
        header.append("params")
        lines += ["", f"## {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, m in strategies.items():
            pass1 = _cell(m["pass@1"], m["stderr"])
            k_max = max(m["pass@k"], key=int)
            params = {k: v for k, v in m["params"].items() if k not in HIDDEN_PARAMS}
            name = f"{label} ({TUNED_ON[m['params']['tuned_on']]})" if "tuned_on" in m["params"] else label
            row = [
                name, f"**{pass1}**" if best > 0 and math.isclose(m["pass@1"], best) else pass1, f"{_cell(m['pass@k'][k_max])} (k={k_max})",
                f"{_cell(m['majority'], m['majority_stderr'])} (k={m['samples']})",
            ]
            if paired:
                row += [_paired_cell(m["paired"][metric]) if "paired" in m else "baseline" for metric in ("pass@1", "majority")]
            row += [
                str(m["no_answer"]), f"{m['mean_temperature']:.2f} ({m['std_temperature']:.2f})", f"{m['mean_top_p']:.2f} ({m['std_top_p']:.2f})",
                f"{m['mean_length']:.1f}", f"{m['tokens_per_s']:.1f}", *[_cell(m[e], m[f"{e}_stderr"]) for e in extras],
            ]
            row += [f"{m['distinct_2']:.3f}"] if open_ended else []
            row.append(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append(f"{next(iter(strategies.values()))['n_problems']} problems; samples per problem: "
                     + ", ".join(f"{label} {m['samples']}" for label, m in strategies.items()) + ".")
        if paired:
            lines += ["", f"Δ: each strategy minus the baseline, {paired['baseline']}, problem by problem over the {paired['n']} problems "
                      "both ran (the same seed for a given problem and sample): the mean difference ± its standard error, and "
                      f"[a 95% percentile interval from {BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the problems, seed {BOOTSTRAP_SEED}]."]
    lines += ["", "pass@1 is the mean over problems of the share of correct samples, ± one standard error over problems.",
              "pass@k is unbiased (Chen et al., 2021). 'no answer' counts samples with no answer to extract (scored wrong).",
              "majority is self-consistency over a problem's k samples: its most frequent answer (whitespace and case ignored, "
              "ties to the first seen; samples without an answer do not vote) decides it.", ""]
    return "\n".join(lines)


def plot_accuracy(document: dict[str, Any], path: Path) -> None:
    """Bars of pass@1 per strategy with ± one standard error, one panel per task."""
    plt = pyplot()
    tasks = document["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 1.1 * max(len(s) for s in tasks.values())) * len(tasks), 3.8), squeeze=False)
    for axis, (task, strategies) in zip(axes[0], tasks.items()):
        labels = list(strategies)
        axis.bar(range(len(labels)), [strategies[s]["pass@1"] for s in labels], yerr=[strategies[s]["stderr"] for s in labels],
                 capsize=4, color=["tab:orange" if s.startswith("autodeco") else "tab:blue" for s in labels])
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_title(task, fontsize=9)
        axis.set_ylabel("pass@1 (± s.e.)")
    save_png(figure, path)


def plot_distributions(records: list[dict[str, Any]], path: Path) -> bool:
    """Histograms of the per-token T and P that autodeco used, per task. False if there were none."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["decoding"].startswith("autodeco") and record["temperatures"]:
            by_task.setdefault(record["task"], []).append(record)
    if not by_task:
        return False
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for task, rows in by_task.items():
        left.hist([t for r in rows for t in r["temperatures"]], bins=40, alpha=0.55, label=task)
        right.hist([p for r in rows for p in r["top_ps"]], bins=40, alpha=0.55, label=task)
    left.set_title("predicted temperature per token")
    right.set_title("predicted top-p per token")
    left.legend(fontsize=7)
    save_png(figure, path)
    return True


def plot_example(records: list[dict[str, Any]], path: Path, max_tokens: int = 60) -> bool:
    """One autodeco completion (the first correct one, else the first) with the T and P of each
    of its tokens drawn over the tokens. False if there was none."""
    candidates = [r for r in records if r["decoding"].startswith("autodeco") and len(r["pieces"]) >= 2]
    if not candidates:
        return False
    example = next((r for r in candidates if r["correct"]), candidates[0])
    title = f"{example['task']} · problem {example['problem']} · {'correct' if example['correct'] else 'wrong'}"
    save_png(token_trace_figure(example["pieces"], example["temperatures"], example["top_ps"], title, max_tokens), path)
    return True


def write_report(out: Path, document: dict[str, Any], records: list[dict[str, Any]]) -> list[Path]:
    """Write results.json, report.md and the plots into ``out``; returns the paths written."""
    written = [out / RESULTS_NAME, out / REPORT_NAME, out / "accuracy.png"]
    atomic_write_text(json.dumps(document, indent=2) + "\n", written[0])
    atomic_write_text(markdown_report(document), written[1])
    plot_accuracy(document, written[2])
    if plot_distributions(records, out / "temperature_top_p.png"):
        written.append(out / "temperature_top_p.png")
    if plot_example(records, out / "example.png"):
        written.append(out / "example.png")
    return written
