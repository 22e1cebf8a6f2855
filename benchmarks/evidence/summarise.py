"""Summary of the evidence run's test results: one table over the tasks, the goals checked task by
task on the paired differences, and a compact table for the README.

Reads every ``test/<name>/results.json`` under ``--results`` (evaluate.sh writes one ``autodeco
eval`` folder per task; the tasks and their specs come from tasks.sh, and a task without results
is listed as not yet run, so a partial run summarises too) and writes ``summary.md`` and
``summary.json`` there; prints the README table.

The runs compare every strategy with the baseline autodeco problem by problem and store
Δ = strategy − autodeco. Here every Δ is autodeco − strategy: the sign flipped, the bootstrap
interval [lo, hi] becoming [−hi, −lo], wins and losses swapped (the s.e. is unchanged). On pass@1:
win when Δ > 2 paired s.e., loss when Δ < −2 paired s.e., tie otherwise.

    .venv/bin/python benchmarks/evidence/summarise.py [--results DIR] [--held-out gcd,sorting]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from autodeco.io import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "evidence-gemma-3-270m"
DEFAULT_TASKS_FILE = REPO / "benchmarks" / "evidence" / "tasks.sh"
SPLIT = "test"
RESULTS_NAME = "results.json"
SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"

AUTODECO = "autodeco"
COMPARED = ("default", "oracle-dev", "mean")  # the comparisons the goals and the sentences use
METRICS = ("pass@1", "majority")
ORACLE_DEV_MARGIN = 0.01  # one point of pass@1
TOLERANCE = 1e-9  # float noise of differences of means: a Δ this close to a boundary counts as on it
NOT_RUN = "not yet run"
ROLE_TEXT = {"training": "training", "held-out": "held out"}

# goal: ("all",) every task; ("share", s) at least ceil(s x tasks), 4 of 5; ("at least", n) n tasks
GOALS: tuple[dict[str, Any], ...] = (
    {"key": "above-default", "versus": "default", "label": "above default", "goal": ("all",),
     "title": "AutoDeco above default by more than 2 paired s.e.",
     "rule": "met when autodeco − default > 2 × paired s.e. (a win)"},
    {"key": "oracle-dev", "versus": "oracle-dev", "label": "≥ oracle-dev − 1 pt", "goal": ("share", 0.8),
     "title": "AutoDeco at or above the dev-tuned oracle minus 1 point",
     "rule": "met when autodeco − oracle-dev ≥ −0.01 (the point estimate); beside it, whether the 95% interval includes −0.01"},
    {"key": "not-below-mean", "versus": "mean", "label": "not below mean", "goal": ("all",),
     "title": "AutoDeco not below mean by more than 2 paired s.e.",
     "rule": "met when autodeco − mean ≥ −2 × paired s.e. (not a loss)"},
    {"key": "above-mean", "versus": "mean", "label": "above mean", "goal": ("at least", 2),
     "title": "AutoDeco above mean by more than 2 paired s.e.",
     "rule": "met when autodeco − mean > 2 × paired s.e. (a win)"},
)


# --- reading -----------------------------------------------------------------------------------

def parse_tasks_file(text: str) -> dict[str, str]:
    """``{name: spec}`` from tasks.sh's ``declare -A TASK=([name]="spec" ...)``, in its order, ``$RG`` expanded."""
    found = re.search(r"^\s*RG=(\S+)", text, re.MULTILINE)
    rg = found.group(1).strip("\"'") if found else ""
    return {name: spec.replace("${RG}", rg).replace("$RG", rg)
            for name, spec in re.findall(r'^\s*\[([\w.-]+)\]="([^"]*)"', text, re.MULTILINE)}


def load_documents(results: Path, names: list[str]) -> dict[str, dict[str, Any] | None]:
    """Each task's ``test/<name>/results.json`` (None where there is none), for ``names`` and any
    other folder under ``test/`` that holds one (sorted, after them)."""
    root = results / SPLIT
    found = sorted(p.parent.name for p in root.glob(f"*/{RESULTS_NAME}")) if root.is_dir() else []
    ordered = [*names, *(n for n in found if n not in names)]
    return {n: json.loads(path.read_text()) if (path := root / n / RESULTS_NAME).is_file() else None for n in ordered}


# --- the numbers -------------------------------------------------------------------------------

def flip(difference: dict[str, Any]) -> dict[str, Any]:
    """A stored ``strategy − autodeco`` paired difference as ``autodeco − strategy``."""
    low, high = difference["ci95"]
    z = difference.get("z")
    return {**difference, "diff": -difference["diff"], "z": -z if z is not None else None, "ci95": [-high, -low],
            "wins": difference["losses"], "losses": difference["wins"]}


def autodeco_versus(strategies: dict[str, dict[str, Any]], other: str) -> dict[str, Any] | None:
    """autodeco − ``other``, paired (``{"n", "pass@1", "majority"}``), from whichever side holds the
    comparison: ``other`` measured against autodeco (flipped), or autodeco against ``other``; None without one."""
    theirs = strategies.get(other, {}).get("paired")
    if theirs and theirs.get("baseline") == AUTODECO:
        return {"n": theirs["n"], **{m: flip(theirs[m]) for m in METRICS if m in theirs}}
    ours = strategies.get(AUTODECO, {}).get("paired")
    if other in strategies and ours and ours.get("baseline") == other:
        return {"n": ours["n"], **{m: dict(ours[m]) for m in METRICS if m in ours}}
    return None


def verdict(diff: float, stderr: float) -> str:
    """win: Δ > 2 s.e.; loss: Δ < −2 s.e.; tie otherwise (within ``TOLERANCE`` of a bound is a tie)."""
    if diff > 2 * stderr + TOLERANCE:
        return "win"
    if diff < -2 * stderr - TOLERANCE:
        return "loss"
    return "tie"


def goal_met(key: str, difference: dict[str, Any]) -> bool:
    """Whether the paired pass@1 difference (autodeco − the goal's strategy) meets goal ``key``."""
    diff, stderr = difference["diff"], difference["stderr"]
    if key in ("above-default", "above-mean"):
        return verdict(diff, stderr) == "win"
    if key == "not-below-mean":
        return verdict(diff, stderr) != "loss"
    if key == "oracle-dev":
        return diff >= -ORACLE_DEV_MARGIN - TOLERANCE
    raise ValueError(f"unknown goal {key!r}")


def required_count(goal: tuple[Any, ...], total: int) -> int:
    kind = goal[0]
    if kind == "all":
        return total
    if kind == "share":
        return math.ceil(goal[1] * total - TOLERANCE)
    if kind == "at least":
        return min(goal[1], total)
    raise ValueError(f"unknown goal {goal!r}")


def goal_text(goal: tuple[Any, ...], total: int) -> str:
    """``all``, ``4 of 5`` or ``≥ 2``."""
    if goal[0] == "all":
        return "all"
    if goal[0] == "share":
        return f"{required_count(goal, total)} of {total}"
    return f"≥ {goal[1]}"


def _strategy(metrics: dict[str, Any]) -> dict[str, Any]:
    params = metrics.get("params", {})
    k = max(metrics["pass@k"], key=int)
    return {
        "pass@1": metrics["pass@1"], "stderr": metrics["stderr"], "majority": metrics["majority"], "majority_stderr": metrics["majority_stderr"],
        "pass@k": {str(key): value for key, value in metrics["pass@k"].items()}, "k": int(k), "pass@k_max": metrics["pass@k"][k],
        "n_problems": metrics.get("n_problems"), "samples": metrics.get("samples"),
        "mean_temperature": metrics.get("mean_temperature"), "mean_top_p": metrics.get("mean_top_p"),
        "decoding": params.get("decoding"), "temperature": params.get("temperature"), "top_p": params.get("top_p"),
        **({"tuned_on": params["tuned_on"]} if "tuned_on" in params else {}),
    }


def _pick_task(document: dict[str, Any], spec: str | None) -> tuple[str, dict[str, dict[str, Any]]]:
    """The task of a one-task results.json (the one named ``spec`` if it holds several)."""
    tasks = document["tasks"]
    if not tasks:
        raise ValueError("a results.json without tasks")
    name = spec if spec in tasks else next(iter(tasks))
    return name, tasks[name]


def _paired_cell(difference: dict[str, Any] | None, interval: bool = False, digits: int = 3) -> str:
    """``+0.031 ± 0.012``, with ``interval`` ``+0.031 ± 0.012 [+0.008, +0.055]``."""
    if difference is None:
        return "—"
    text = f"{difference['diff']:+.{digits}f} ± {difference['stderr']:.{digits}f}"
    low, high = difference["ci95"]
    return text + (f" [{low:+.{digits}f}, {high:+.{digits}f}]" if interval else "")


PHRASE = {"win": "wins against", "tie": "ties with", "loss": "loses against"}


def task_sentence(task: dict[str, Any]) -> str:
    """``arithmetic (training): AutoDeco wins against default (+0.031 ± 0.012), ties with ...``."""
    head = f"{task['name']} ({ROLE_TEXT[task['role']]})"
    if task["status"] != "run":
        return f"{head}: {NOT_RUN}."
    parts = []
    for other in COMPARED:
        difference = (task["versus"].get(other) or {}).get("pass@1")
        parts.append(f"has no {other} to compare with" if difference is None
                     else f"{PHRASE[verdict(difference['diff'], difference['stderr'])]} {other} ({_paired_cell(difference)})")
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"{head}: AutoDeco {listed}, pass@1 problem by problem over {task['n_problems']} problems."


def summarise_task(name: str, spec: str | None, role: str, document: dict[str, Any] | None) -> dict[str, Any]:
    """One task's row: its strategies, autodeco − each other strategy (paired), the verdicts and the goals."""
    if document is None:
        task: dict[str, Any] = {"name": name, "spec": spec, "role": role, "status": NOT_RUN}
        return {**task, "sentence": task_sentence(task)}
    full_spec, strategies = _pick_task(document, spec)
    versus = {other: v for other in strategies if other != AUTODECO and (v := autodeco_versus(strategies, other)) is not None}
    first = strategies.get(AUTODECO) or next(iter(strategies.values()))
    verdicts = {other: verdict(v["pass@1"]["diff"], v["pass@1"]["stderr"]) for other, v in versus.items() if "pass@1" in v}
    goals: dict[str, Any] = {}
    for goal in GOALS:
        difference = (versus.get(goal["versus"]) or {}).get("pass@1")
        result: dict[str, Any] = {"met": None if difference is None else goal_met(goal["key"], difference)}
        if difference is not None and goal["key"] == "oracle-dev":
            low, high = difference["ci95"]
            result["interval_includes_margin"] = low - TOLERANCE <= -ORACLE_DEV_MARGIN <= high + TOLERANCE
        goals[goal["key"]] = result
    task = {
        "name": name, "spec": full_spec, "role": role, "status": "run", "model": document.get("model"), "heads": document.get("heads"),
        "created": document.get("created"), "n_problems": first.get("n_problems"), "samples": first.get("samples"),
        "strategies": {label: _strategy(m) for label, m in strategies.items()}, "versus": versus, "verdicts": verdicts, "goals": goals,
    }
    return {**task, "sentence": task_sentence(task)}


def build_summary(specs: dict[str, str], documents: dict[str, dict[str, Any] | None], held_out: set[str]) -> dict[str, Any]:
    """The summary (what summary.json holds) of the tasks of ``specs`` and ``documents`` (None: not yet run)."""
    names = [*specs, *(n for n in documents if n not in specs)]
    tasks = {n: summarise_task(n, specs.get(n), "held-out" if n in held_out else "training", documents.get(n)) for n in names}
    run = [t for t in tasks.values() if t["status"] == "run"]
    heads: dict[str, list[str]] = {}
    for t in run:
        heads.setdefault(str(t["heads"]) if t["heads"] is not None else "none", []).append(t["name"])
    models = sorted({str(t["model"]) for t in run})
    total, not_run = len(tasks), [n for n, t in tasks.items() if t["status"] != "run"]
    goals = []
    for goal in GOALS:
        met = [n for n, t in tasks.items() if t["status"] == "run" and t["goals"][goal["key"]]["met"]]
        missing = [n for n, t in tasks.items() if t["status"] == "run" and t["goals"][goal["key"]]["met"] is None]
        required = required_count(goal["goal"], total)
        status = "reached" if len(met) >= required else "missed" if len(met) + len(not_run) < required else "open"
        line = f"{goal['label']}: {len(met)} of {total} tasks (goal: {goal_text(goal['goal'], total)}) — {status}"
        line += f", {len(not_run)} not yet run" if not_run and status == "open" else ""
        line += f"; no {goal['versus']} result for {', '.join(missing)}" if missing else ""
        goals.append({**{k: v for k, v in goal.items() if k != "goal"}, "goal": goal_text(goal["goal"], total), "required": required,
                      "met": met, "total": total, "status": status, "line": line})
    return {"split": SPLIT, "held_out": sorted(held_out), "models": models, "heads": heads, "mixed_heads": len(heads) > 1,
            "not_yet_run": not_run, "goals": goals, "tasks": tasks}


# --- writing -----------------------------------------------------------------------------------

def _value(strategy: dict[str, Any] | None, key: str = "pass@1") -> str:
    return "—" if strategy is None else f"{strategy[key]:.3f}"


def _number(x: float) -> str:
    return f"{round(x, 3):g}"


def _tuned(strategy: dict[str, Any] | None) -> str:
    if strategy is None:
        return "—"
    if strategy.get("temperature") is None:
        return _value(strategy)
    return f"{strategy['pass@1']:.3f} (T={_number(strategy['temperature'])}, P={_number(strategy['top_p'])})"


def _mean(strategy: dict[str, Any] | None) -> str:
    if strategy is None or strategy.get("temperature") is None:
        return _value(strategy)
    top_p = strategy.get("top_p")
    return f"{strategy['pass@1']:.3f} (T={_number(strategy['temperature'])}" + (f", P={_number(top_p)})" if top_p is not None and top_p != 1 else ")")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _heads_lines(summary: dict[str, Any]) -> list[str]:
    heads = summary["heads"]
    if not heads:
        return ["- heads: none (no task run yet)"]
    if not summary["mixed_heads"]:
        [(name, _)] = heads.items()
        return [f"- heads: `{name}` (every task run)"]
    return ["- **heads differ between tasks**: the comparisons across tasks mix heads; rerun evaluate.sh with one HEADS for those tasks:",
            *[f"  - `{name}`: {', '.join(tasks)}" for name, tasks in heads.items()]]


def markdown_summary(summary: dict[str, Any]) -> str:
    """summary.md: the table over the tasks, the goals task by task, and a sentence per task."""
    tasks = list(summary["tasks"].values())
    run = [t for t in tasks if t["status"] == "run"]
    ks = {t["strategies"][AUTODECO]["k"] for t in run if AUTODECO in t["strategies"]}
    k_header = f"autodeco pass@{ks.pop()}" if len(ks) == 1 else "autodeco pass@k"
    lines = ["# Evidence run: test results", "",
             f"- model: {', '.join(summary['models']) or '—'}", *_heads_lines(summary),
             f"- held out (never trained on, not used to choose the heads): {', '.join(summary['held_out']) or 'none'}",
             f"- {NOT_RUN}: {', '.join(summary['not_yet_run'])}" if summary["not_yet_run"] else f"- every task run ({len(tasks)})",
             "", "Goals:", "", *[f"- {g['line']}" for g in summary["goals"]], "", "## Results", ""]
    header = ["task", "spec", "role", *(["heads"] if summary["mixed_heads"] else []), "n problems", "samples", "greedy", "default",
              "oracle (test-tuned, T/P)", "oracle-dev (T/P)", "mean (T)", "autodeco pass@1", k_header,
              "majority default", "majority mean", "majority autodeco", "autodeco − default", "autodeco − oracle-dev", "autodeco − mean"]
    lines += [_row(header), "|" + "---|" * len(header)]
    for t in tasks:
        first = [t["name"], f"`{t['spec']}`" if t["spec"] else "—", ROLE_TEXT[t["role"]]]
        if t["status"] != "run":
            rest = [""] * (len(header) - len(first))
            rest[header.index("n problems") - len(first)] = NOT_RUN
            lines.append(_row([*first, *rest]))
            continue
        s = t["strategies"]
        ours = s.get(AUTODECO)
        k_cell = "—" if ours is None else f"{ours['pass@k_max']:.3f}" + ("" if k_header != "autodeco pass@k" else f" (k={ours['k']})")
        lines.append(_row([
            *first, *([f"`{t['heads']}`"] if summary["mixed_heads"] else []), str(t["n_problems"]), str(t["samples"]),
            _value(s.get("greedy")), _value(s.get("default")), _tuned(s.get("oracle")), _tuned(s.get("oracle-dev")), _mean(s.get("mean")),
            _value(ours), k_cell, *[_value(s.get(label), "majority") for label in ("default", "mean", AUTODECO)],
            *[_paired_cell((t["versus"].get(other) or {}).get("pass@1")) for other in COMPARED],
        ]))
    lines += ["", "pass@1, pass@k and majority (self-consistency over a problem's samples) as `autodeco eval` reports them; "
              "each pass@1's own s.e. is in summary.json. The last three columns are autodeco − the strategy on pass@1, "
              "problem by problem (the same seed for a given problem and sample), ± the paired s.e. oracle is tuned on the test "
              "problems themselves (an upper bound); oracle-dev on the dev split (a baseline a user can reach); mean decodes at "
              "autodeco's mean T and P on the task.", "", "## Goals", "",
              "Each on pass@1: Δ = autodeco − the strategy, problem by problem, ± its paired s.e. [95% bootstrap interval]; "
              "verdict win when Δ > 2 s.e., loss when Δ < −2 s.e., tie otherwise."]
    for goal in summary["goals"]:
        oracle = goal["key"] == "oracle-dev"
        head = ["task", "role", f"autodeco − {goal['versus']}", "verdict", "met", *(["95% interval includes −0.01"] if oracle else [])]
        lines += ["", f"### {goal['title']}", "", f"Rule: {goal['rule']}.", "", _row(head), "|" + "---|" * len(head)]
        for t in tasks:
            if t["status"] != "run":
                lines.append(_row([t["name"], ROLE_TEXT[t["role"]], NOT_RUN, "", "", *([""] if oracle else [])]))
                continue
            difference = (t["versus"].get(goal["versus"]) or {}).get("pass@1")
            result = t["goals"][goal["key"]]
            if difference is None:
                lines.append(_row([t["name"], ROLE_TEXT[t["role"]], f"no {goal['versus']} result", "", "n/a", *(["n/a"] if oracle else [])]))
                continue
            digits = 4 if oracle else 3  # -0.0100 (met) and -0.0102 (not) both read -0.010 at 3
            cells = [t["name"], ROLE_TEXT[t["role"]], _paired_cell(difference, interval=True, digits=digits), t["verdicts"][goal["versus"]],
                     "yes" if result["met"] else "no"]
            lines.append(_row([*cells, *(["yes" if result["interval_includes_margin"] else "no"] if oracle else [])]))
        lines += ["", f"**{goal['line']}**"]
    lines += ["", "## In words", "", *[f"- {t['sentence']}" for t in tasks], ""]
    return "\n".join(lines)


def markdown_table_for_readme(summary: dict[str, Any]) -> str:
    """A compact table: task, held out?, default, oracle-dev, mean, autodeco pass@1, autodeco − mean
    (paired), and the verdicts against default / oracle-dev / mean."""
    header = ["task", "held out?", "default", "oracle-dev", "mean", "autodeco", "autodeco − mean (paired)", "vs default / oracle-dev / mean"]
    lines = [_row(header), "|" + "---|" * len(header)]
    for t in summary["tasks"].values():
        held = "yes" if t["role"] == "held-out" else "no"
        if t["status"] != "run":
            lines.append(_row([t["name"], held, NOT_RUN, "", "", "", "", ""]))
            continue
        s = t["strategies"]
        lines.append(_row([
            t["name"], held, _value(s.get("default")), _value(s.get("oracle-dev")), _value(s.get("mean")), _value(s.get(AUTODECO)),
            _paired_cell((t["versus"].get("mean") or {}).get("pass@1")), " / ".join(t["verdicts"].get(other, "—") for other in COMPARED),
        ]))
    lines += ["", "pass@1 on the test split; verdicts on autodeco − the strategy, paired by problem: win above 2 s.e., "
              "loss below −2 s.e., tie between" + (". Tasks were evaluated with different heads." if summary["mixed_heads"] else ".")]
    return "\n".join(lines) + "\n"


def write_summary(results: Path, summary: dict[str, Any]) -> list[Path]:
    paths = [results / SUMMARY_MD, results / SUMMARY_JSON]
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(markdown_summary(summary), paths[0])
    atomic_write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", paths[1])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the evidence run's results folder (holds test/<task>/results.json)")
    parser.add_argument("--tasks-file", type=Path, default=DEFAULT_TASKS_FILE, help="tasks.sh: the task names and specs expected")
    parser.add_argument("--held-out", default="gcd,sorting", help="comma-separated names of the held-out tasks; the others are training tasks")
    args = parser.parse_args(argv)
    specs = parse_tasks_file(args.tasks_file.read_text()) if args.tasks_file.is_file() else {}
    held_out = {name.strip() for name in args.held_out.split(",") if name.strip()}
    documents = load_documents(args.results, list(specs))
    unknown = sorted(held_out - documents.keys())
    if unknown:
        parser.error(f"--held-out names no task: {', '.join(unknown)} (tasks: {', '.join(documents) or 'none'})")
    if not documents:
        parser.error(f"no tasks: {args.tasks_file} lists none and {args.results / SPLIT} holds no <task>/{RESULTS_NAME}")
    summary = build_summary(specs, documents, held_out)
    for path in write_summary(args.results, summary):
        print(f"wrote {path}")
    print()
    print(markdown_table_for_readme(summary), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
