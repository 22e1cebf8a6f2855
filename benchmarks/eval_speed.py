"""Wall time of ``autodeco eval`` before and after an engine change, in one run, and whether both
wrote the same results.json (issue 19; goal: the working tree at least 3x faster than the commit).

    python benchmarks/eval_speed.py                                  # 100 problems, 8 samples, before = ad0a34f
    python benchmarks/eval_speed.py --dtype float32 --repeats 2 --name gemma-3-270m-float32
    python benchmarks/eval_speed.py --limit 4 --samples 2 --name smoke --results /tmp/smoke

The workload: Gemma-3-270M with the shipped heads on reasoning_gym basic_arithmetic with two
1-digit terms (the task of benchmarks/results/eval-gemma-3-270m-heads), the first ``--limit``
problems, ``--samples`` samples each, strategies greedy, default, static:0.3,1, autodeco and mean.
"Before" is the commit ``--before``, checked out in a temporary ``git worktree`` (removed at the
end unless ``--keep``); "after" is this working tree. Each contender runs its own CLI
(``python -m autodeco.cli eval``, with PYTHONPATH at its src/) in this venv, into a fresh --out;
with ``--repeats`` > 1 they alternate (before, after, before, after, ...).

Measured per run: the subprocess's wall clock (Python start-up, model load, generation, scoring,
report and plots), and the generation time alone: the sum of the per-sample ``seconds`` the
runner writes to samples.jsonl (each batch's generate() time shared over its rows). A separate
start-up check per contender times ``import autodeco.cli`` and the model + heads load, and shows
which package each contender imports. Ratios are before / after, per alternated pair.

Sameness: results.json of the two (first-run) outputs are compared metric by metric (timings
such as tokens_per_s, created and wall_seconds left out), and samples.jsonl token by token. A
different batch composition may change float rounding, so a token can differ now and then; the
largest difference is reported as found. Writes benchmarks/results/eval_speed-<name>.json and .md.

On CPU, run it with glibc's allocator told to keep freed memory (as ``make bench`` does):
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` (see decode_speed.py);
the subprocesses inherit the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autodeco.io import atomic_write_text
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
TASK = "reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
STRATEGIES = "greedy,default,static:0.3,1,autodeco,mean"
BEFORE, AFTER = "before", "after"
DEFAULT_BATCH = "each contender's default (8 before, 32 after)"
TIMING_KEYS = {"tokens_per_s", "created", "wall_seconds"}  # differ from run to run by nature

# Run in a contender's own interpreter: which package it imports, and how long import and load take.
STARTUP_CHECK = """
import json, statistics, sys, time
started = time.perf_counter()
import autodeco, autodeco.cli as cli
imported = time.perf_counter()
from pathlib import Path
model, tokenizer = cli.load_model_and_tokenizer(sys.argv[1], Path(sys.argv[2]), sys.argv[3], None, False)
loaded = time.perf_counter()
from autodeco.evaluation.tasks import load_task
task, chat = load_task(sys.argv[4]), bool(getattr(tokenizer, "chat_template", None))  # --prompt-style auto
prompts = [task.prompt(problem, chat) for problem in task.problems()[: int(sys.argv[5])]]
counts = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True) if chat else tokenizer(p).input_ids) for p in prompts]
print(json.dumps({
    "package": autodeco.__file__, "import_s": imported - started, "load_s": loaded - imported, "dtype": str(model.dtype),
    "prompt_tokens": {"style": "chat" if chat else "few-shot", "min": min(counts), "mean": statistics.fmean(counts), "max": max(counts)},
}))
"""


def eval_args(args: argparse.Namespace, out: Path) -> list[str]:
    """The ``autodeco eval`` arguments both contenders get."""
    return [
        "eval", "--model", args.model, "--heads", args.heads, "--task", args.task, "--strategies", args.strategies,
        "--samples", str(args.samples), "--limit", str(args.limit), *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
        "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--dtype", args.dtype, "--out", str(out),
    ]


def contender_env(src: Path) -> dict[str, str]:
    """This environment with the contender's src/ first on the path."""
    return {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}


def startup_check(name: str, src: Path, args: argparse.Namespace, cwd: Path) -> dict[str, Any]:
    """Import and load timings in the contender's interpreter; refuses a contender that imports another package."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STARTUP_CHECK, args.model, args.heads, args.dtype, args.task, str(args.limit)],
                          env=contender_env(src), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: the start-up check failed:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(found["package"]).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"{name}: imported {found['package']}, not the package under {src}")
    return {**found, "wall_s": wall}


def generate_seconds(samples: Path) -> float | None:
    """Total generate() time: the sum of the runner's per-sample seconds (None if it writes none)."""
    total, seen = 0.0, False
    for line in samples.read_text().splitlines():
        seconds = json.loads(line).get("seconds")
        if seconds is not None:
            total, seen = total + seconds, True
    return total if seen else None


def run_eval(name: str, src: Path, args: argparse.Namespace, out: Path, cwd: Path) -> dict[str, Any]:
    """One timed ``autodeco eval`` subprocess; its log is kept beside its output."""
    command = [sys.executable, "-m", "autodeco.cli", *eval_args(args, out)]
    log = out.parent / f"{out.name}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, env=contender_env(src), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: autodeco eval failed (exit {done.returncode}); its output:\n{log.read_text()[-4000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"contender": name, "wall_s": wall, "generate_s": generate_seconds(out / "samples.jsonl"),
            "eval_wall_seconds": results.get("wall_seconds"), "out": str(out)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": leaf}, timing fields left out."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        if key not in TIMING_KEYS:
            flat.update(flatten(inner, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def compare_results(before: Path, after: Path) -> dict[str, Any]:
    """results.json metric by metric: identical, or which fields differ and the largest numeric difference."""
    first, second = flatten(json.loads(before.read_text())["tasks"]), flatten(json.loads(after.read_text())["tasks"])
    differing, largest, largest_at = [], 0.0, None
    for key in sorted(first.keys() | second.keys()):
        a, b = first.get(key), second.get(key)
        if a == b:
            continue
        differing.append({"field": key, BEFORE: a, AFTER: b})
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            gap = abs(a - b)
            if gap > largest or largest_at is None:
                largest, largest_at = gap, key
    return {"identical": not differing, "fields": len(first.keys() | second.keys()), "differing": differing,
            "largest_difference": largest if largest_at else None, "largest_difference_at": largest_at}


def compare_samples(before: Path, after: Path) -> dict[str, Any]:
    """samples.jsonl token ids per (task, decoding, problem, sample). The mean strategy's samples
    are filed under its T and P (static:T,P), which differ when the autodeco samples' mean does:
    per task, a decoding found on one side only is paired with the one found on the other side only."""
    def records(path: Path) -> dict[tuple, list[int]]:
        rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
        return {(r["task"], r["decoding"], r["problem"], r["sample"]): r["token_ids"] for r in rows}

    first, second = records(before), records(after)
    paired = []
    for task in sorted({k[0] for k in first}):
        mine = {k[1] for k in first if k[0] == task} - {k[1] for k in second if k[0] == task}
        theirs = {k[1] for k in second if k[0] == task} - {k[1] for k in first if k[0] == task}
        if len(mine) == 1 and len(theirs) == 1:
            (old,), (new,) = mine, theirs
            label = f"{old} / {new}"
            paired.append({"task": task, BEFORE: old, AFTER: new})
            first = {(t, label if (t, d) == (task, old) else d, p, n): v for (t, d, p, n), v in first.items()}
            second = {(t, label if (t, d) == (task, new) else d, p, n): v for (t, d, p, n), v in second.items()}
    shared = first.keys() & second.keys()
    differing = sorted(key for key in shared if first[key] != second[key])
    return {"samples": len(shared), "identical_samples": len(shared) - len(differing),
            "only_before": len(first.keys() - second.keys()), "only_after": len(second.keys() - first.keys()),
            "paired_decodings": paired,
            "differing_by_decoding": {d: sum(1 for k in differing if k[1] == d) for d in sorted({k[1] for k in differing})},
            "first_differing": [{"decoding": k[1], "problem": k[2], "sample": k[3], BEFORE: first[k], AFTER: second[k]} for k in differing[:3]]}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def add_worktree(commit: str, folder: Path) -> str:
    """A detached worktree of ``commit`` at ``folder``; returns the full commit id."""
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), full], capture_output=True, text=True, check=True)
    return full


def remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True, text=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, text=True)


def describe_after() -> str:
    """HEAD and whether the working tree has changes (what "after" is)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return f"working tree at {head[:7]}" + (" with uncommitted changes" if dirty else " (clean)")


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    setup, runs, ratios = report["setup"], report["runs"], report["ratios"]
    tokens = report["startup"][AFTER]["prompt_tokens"]
    lines = [
        f"# autodeco eval speed: {setup['name']}", "", f"`{setup['command']}`", "",
        f"`autodeco eval` on {setup['model']} with heads {setup['heads']}: {setup['task']}, first {setup['limit']} problems, "
        f"{setup['samples']} samples, strategies {setup['strategies']}, batch size {setup['batch_size'] or DEFAULT_BATCH}, "
        f"at most {setup['max_new_tokens']} new tokens, dtype {setup['dtype']} ({report['startup'][AFTER]['dtype']}), "
        f"prompts of {tokens['min']}-{tokens['max']} tokens ({tokens['style']}). "
        f"Before: commit {setup['before'][:7]}; after: {setup['after']}. {setup['repeats']} alternated run(s) each.", "",
        machine_line(report["machine"]), "",
        "Wall = the whole `python -m autodeco.cli eval` process; generate = the sum of the runner's per-sample generate() seconds.", "",
        "| run | contender | wall (s) | generate (s) | results.json wall_seconds |", "|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {r['repeat']} | {r['contender']} | {r['wall_s']:.1f} | {fmt(r['generate_s'])} | {fmt(r['eval_wall_seconds'])} |" for r in runs]
    lines += ["", "Before / after, per alternated pair:", "", "| pair | wall | generate |", "|---:|---:|---:|"]
    lines += [f"| {i + 1} | {w:.2f}x | {fmt(g, 2)}x |" for i, (w, g) in enumerate(zip(ratios["wall"], ratios["generate"] or [None] * len(ratios["wall"])))]
    wall = report["ratio_spread"]["wall"]
    lines += ["", f"Wall ratio min / median / max: {wall['min']:.2f}x / {wall['median']:.2f}x / {wall['max']:.2f}x"
              + (f"; generate: {report['ratio_spread']['generate']['min']:.2f}x / {report['ratio_spread']['generate']['median']:.2f}x / "
                 f"{report['ratio_spread']['generate']['max']:.2f}x" if report["ratio_spread"].get("generate") else "") + ".", ""]
    start = report["startup"]
    lines += [f"Start-up (separate check): import {start[BEFORE]['import_s']:.1f} s / {start[AFTER]['import_s']:.1f} s, "
              f"model + heads load {start[BEFORE]['load_s']:.1f} s / {start[AFTER]['load_s']:.1f} s (before / after).", ""]
    same, samples = report["same_results"], report["same_samples"]
    if same["identical"]:
        lines.append(f"results.json: identical ({same['fields']} metric fields, timings left out).")
    else:
        lines.append(f"results.json: {len(same['differing'])} of {same['fields']} metric fields differ; largest numeric difference "
                     f"{fmt(same['largest_difference'], 6)} at `{same['largest_difference_at']}`.")
    lines.append(f"samples.jsonl: {samples['identical_samples']} of {samples['samples']} samples have the same tokens"
                 + (f" (differing by decoding: {samples['differing_by_decoding']})" if samples["differing_by_decoding"] else "")
                 + "".join(f"; {p[BEFORE]} (before) is compared with {p[AFTER]} (after), the mean strategy's T differing" for p in samples["paired_decodings"])
                 + (f"; only before: {samples['only_before']}, only after: {samples['only_after']}" if samples["only_before"] or samples["only_after"] else "") + ".")
    if not same["identical"]:
        lines += ["", "| field | before | after |", "|---|---:|---:|"]
        lines += [f"| {d['field']} | {d[BEFORE]} | {d[AFTER]} |" for d in same["differing"][:20]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--name", default="gemma-3-270m")
    parser.add_argument("--before", default="ad0a34f", help="commit timed as 'before' (the working tree is 'after')")
    parser.add_argument("--after", default=None, help="commit timed as 'after' instead of the working tree (e.g. to check the script)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--dtype", default="auto", help="auto (autodeco eval's default: the checkpoint's, bf16 for Gemma), float32, bfloat16")
    parser.add_argument("--batch-size", type=int, default=0, help=f"rows decoded together; 0: {DEFAULT_BATCH}")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="as in benchmarks/results/eval-gemma-3-270m-heads")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--heads", default="gemma-3-270m")
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of eval_speed-<name>.json and .md")
    parser.add_argument("--keep", action="store_true", help="keep the worktree and eval outputs (their folder is printed)")
    args = parser.parse_args()
    if args.repeats < 1 or args.limit < 1 or args.samples < 1:
        parser.error("--repeats, --limit and --samples must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="eval_speed-"))
    tree, after_tree = work / "before-tree", work / "after-tree"
    print(f"work folder: {work}")
    try:
        commit = add_worktree(args.before, tree)
        if args.after is None:
            sources, after = {BEFORE: tree / "src", AFTER: REPO / "src"}, describe_after()
        else:
            sources, after = {BEFORE: tree / "src", AFTER: after_tree / "src"}, f"commit {add_worktree(args.after, after_tree)[:7]}"
        print(f"before: commit {commit[:7]} (worktree {tree}); after: {after}")
        startup = {}
        for name, src in sources.items():
            startup[name] = startup_check(name, src, args, work)
            tokens = startup[name]["prompt_tokens"]
            print(f"{name}: imports {startup[name]['package']}; import {startup[name]['import_s']:.1f} s, "
                  f"load {startup[name]['load_s']:.1f} s ({startup[name]['dtype']}); prompts of {tokens['min']}-{tokens['max']} "
                  f"tokens (mean {tokens['mean']:.1f}, {tokens['style']})")
        runs = []
        for repeat in range(1, args.repeats + 1):
            for name, src in sources.items():
                print(f"[{repeat}/{args.repeats}] {name}: autodeco eval ...", end=" ", flush=True)
                run = {"repeat": repeat, **run_eval(name, src, args, work / f"{name}-{repeat}", work)}
                runs.append(run)
                print(f"{run['wall_s']:.1f} s wall, {fmt(run['generate_s'])} s generating")

        def per_pair(key: str) -> list[float] | None:
            pairs = [(b[key], a[key]) for b, a in zip(runs[0::2], runs[1::2])]
            return None if any(v is None for pair in pairs for v in pair) else [b / a for b, a in pairs]

        ratios = {"wall": per_pair("wall_s"), "generate": per_pair("generate_s")}
        first = {r["contender"]: Path(r["out"]) for r in runs if r["repeat"] == 1}
        same = compare_results(first[BEFORE] / "results.json", first[AFTER] / "results.json")
        same_samples = compare_samples(first[BEFORE] / "samples.jsonl", first[AFTER] / "samples.jsonl")
    finally:
        if not args.keep:
            for folder in (tree, after_tree):
                if folder.exists():
                    remove_worktree(folder)
            shutil.rmtree(work, ignore_errors=True)

    command = "python benchmarks/eval_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items() if k not in ("keep", "results") and v is not None)
    setup = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "before": commit, "after": after, "command": command}
    report = {
        "setup": setup, "machine": machine_info(), "startup": startup, "runs": runs, "ratios": ratios,
        "ratio_spread": {k: spread(v) for k, v in ratios.items() if v}, "same_results": same, "same_samples": same_samples,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"eval_speed-{args.name}"
    atomic_write_text(json.dumps(report, indent=2) + "\n", stem.with_suffix(".json"))
    atomic_write_text(markdown(report), stem.with_suffix(".md"))
    wall = report["ratio_spread"]["wall"]
    print(f"before / after wall: median {wall['median']:.2f}x (min {wall['min']:.2f}x, max {wall['max']:.2f}x); "
          f"results.json {'identical' if same['identical'] else 'differs'}; "
          f"{same_samples['identical_samples']}/{same_samples['samples']} samples with the same tokens")
    print(f"wrote {stem}.json and {stem}.md" + (f"; kept {work}" if args.keep else ""))


if __name__ == "__main__":
    main()
