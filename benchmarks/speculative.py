"""Exact speculative decoding with AutoDeco on Gemma-3-270M: each draft source against plain
AutoDeco decoding, same prompts and seeds, one run.

    python benchmarks/speculative.py                    # Gemma-3-270M bf16, shipped heads
    python benchmarks/speculative.py --new-tokens 64 --repeats 1

Workloads: "copy" repeats a given passage (input-repeating, where prompt lookup shines) and
"free" continues open prompts. Sources: ngram (prompt lookup) and early-exit:K (the target's
first K layers as a greedy draft model; it runs through the same ModelDrafter as draft:MODEL --
no smaller model shares Gemma 3's tokenizer on this machine; below 12 layers Gemma's early exit
drafts noise). Every row is seeded, so an exact
method gives the same tokens as plain decoding: the table counts the rows that do (bf16 forwards of
K+1 tokens may round differently from one-token forwards, which can flip a near-tie). Goal: at
least 1.5x tokens/s on the input-repeating workload. Writes
benchmarks/results/speculative-<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autodeco import AutoDecoModelForCausalLM, SamplingParams, Speculation, generate, make_speculation
from autodeco.io import atomic_write_text
from autodeco.models import load_tokenizer
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"
PASSAGES = [
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, the members agreed to fund the "
    "reading room, the children's section and the archive, but they postponed the decision on the café until the spring meeting.",
    "To install the package, download the archive, unpack it into a folder of your choice, and run the setup script from that folder. "
    "The script checks the Python version, creates a virtual environment and installs the dependencies listed in the requirements file.",
    "Photosynthesis takes place in the chloroplasts of plant cells. Light energy is absorbed by chlorophyll and used to split water "
    "molecules, releasing oxygen; the energy is stored in ATP and NADPH, which drive the fixation of carbon dioxide into sugars.",
    "The train left the station at seven in the morning and reached the coast just before noon. The passengers walked along the harbour, "
    "had lunch in a small restaurant near the lighthouse and took the last boat to the island in the afternoon.",
]
FREE_PROMPTS = ["Once upon a time, in a small village by the sea,", "The best way to learn a new language is", "Here is a short story about a robot:", "The history of the bicycle begins"]


def copy_prompt(passage: str) -> str:
    example = "The cat sat on the mat and looked at the garden."
    return f"Copy the text exactly.\nText: {example}\nCopy: {example}\n\nText: {passage}\nCopy:"


def timed(model, tokenizer, prompts: list[str], params: list[SamplingParams], speculation: Speculation | None) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    completions = generate(model, tokenizer, prompts, params, speculation=speculation)
    return time.perf_counter() - start, [c.token_ids for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="heads checkpoint or alias (its base is loaded)")
    parser.add_argument("--name", default="gemma-3-270m")
    parser.add_argument("--sources", default="ngram,early-exit:12", help="early-exit below 12 of Gemma's 18 layers drafts noise (logit lens)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each is kept")
    args = parser.parse_args()

    model = AutoDecoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    tokenizer = load_tokenizer(model.base_name_or_path)
    workloads = {"copy": [copy_prompt(p) for p in PASSAGES], "free": FREE_PROMPTS}
    sources = [s for s in args.sources.split(",") if s]
    rows = []
    for workload, prompts in workloads.items():
        for first in range(0, len(prompts), args.batch):
            batch = prompts[first : first + args.batch]
            params = [SamplingParams(seed=first + i, max_new_tokens=args.new_tokens) for i in range(len(batch))]
            best: dict[str, float] = {}
            tokens: dict[str, list[list[int]]] = {}
            stats: dict[str, dict] = {}
            for _ in range(args.repeats):
                for source in ["plain", *sources]:
                    speculation = None if source == "plain" else make_speculation(source, model, args.num_draft_tokens)
                    seconds, tokens[source] = timed(model, tokenizer, batch, params, speculation)
                    best[source] = min(best.get(source, float("inf")), seconds)
                    if speculation is not None:
                        stats[source] = speculation.stats.to_dict()
            for source in ["plain", *sources]:
                generated = sum(len(t) for t in tokens[source])
                rows.append({
                    "workload": workload, "prompts": list(range(first, first + len(batch))), "source": source, "seconds": best[source],
                    "tokens": generated, "tokens_per_second": generated / best[source],
                    "identical_rows": sum(a == b for a, b in zip(tokens[source], tokens["plain"])), "rows": len(batch),
                    **stats.get(source, {}),
                })
                print(json.dumps(rows[-1]), flush=True)

    summary = []
    for workload in workloads:
        plain = [r for r in rows if r["workload"] == workload and r["source"] == "plain"]
        plain_tps = sum(r["tokens"] for r in plain) / sum(r["seconds"] for r in plain)
        for source in ["plain", *sources]:
            mine = [r for r in rows if r["workload"] == workload and r["source"] == source]
            tps = sum(r["tokens"] for r in mine) / sum(r["seconds"] for r in mine)
            drafted = sum(r.get("drafted", 0) for r in mine)
            forwards = sum(r.get("target_forwards", 0) for r in mine)
            summary.append({
                "workload": workload, "source": source, "tokens_per_second": tps, "speedup": tps / plain_tps,
                "acceptance_rate": sum(r.get("accepted", 0) for r in mine) / drafted if drafted else None,
                "tokens_per_forward": sum(r["tokens"] - r["rows"] for r in mine) / forwards if forwards else 1.0,
                "identical_rows": sum(r["identical_rows"] for r in mine), "rows": sum(r["rows"] for r in mine),
            })

    machine = machine_info()
    setup = {"model": args.model, "dtype": args.dtype, "batch": args.batch, "new_tokens": args.new_tokens, "num_draft_tokens": args.num_draft_tokens,
             "repeats": args.repeats, "decoding": "autodeco (learned T and P), seeded rows"}
    stem = RESULTS / f"speculative-{args.name}"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(json.dumps({"setup": setup, "machine": machine, "summary": summary, "runs": rows}, indent=2) + "\n", stem.with_suffix(".json"))
    lines = [
        f"# Speculative decoding: {args.model}", "",
        f"{args.dtype}, batch {args.batch}, {args.new_tokens} new tokens per prompt, up to {args.num_draft_tokens} drafts per step, AutoDeco decoding "
        f"(learned T and P) with a seed per prompt; best of {args.repeats} interleaved repeats. Command: `python benchmarks/speculative.py "
        f"--dtype {args.dtype} --batch {args.batch} --new-tokens {args.new_tokens} --repeats {args.repeats} --sources {args.sources} --name {args.name}`.", "",
        "| workload | source | tokens/s | vs plain | acceptance | tokens per target forward | rows identical to plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        acceptance = "" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.0%}"
        lines.append(f"| {s['workload']} | {s['source']} | {s['tokens_per_second']:.1f} | {s['speedup']:.2f}x | {acceptance} | "
                     f"{s['tokens_per_forward']:.2f} | {s['identical_rows']}/{s['rows']} |")
    lines += ["", machine_line(machine)]
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
