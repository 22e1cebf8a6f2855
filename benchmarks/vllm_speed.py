"""AutoDeco on vLLM: the plugin against vLLM's own static sampling and against autodeco's engine.

One run, same model (Gemma-3-270M, shipped heads), prompts and new tokens (128, EOS ignored):

- vLLM on the plain base: greedy; static T=1 (no top-p: the cheapest sampling); static T=0.7,
  top-p 0.9 (vLLM's top-p sorts the vocabulary);
- vLLM + the AutoDeco plugin at a neutral request (temperature 1, top_p 1): learned T and P per
  token, the nucleus found without a sort inside ``compute_logits``;
- autodeco's own engine (transformers), AutoDeco decoding.

Run it with the vLLM environment's python (``make .venv-vllm/.installed``):

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 \\
        .venv-vllm/bin/python benchmarks/vllm_speed.py [--batches 1 8 32] [--repeats 3]

Each contender runs ``--repeats`` times, interleaved; the table gives the median tokens/s and the
spread (min-max) of the ratios. Writes benchmarks/results/vllm_speed-<name>.json and .md. The
same script runs on a GPU with the official ``vllm`` package (``--dtype bfloat16`` is the default;
vLLM 0.33 is outside the tested range: set ``AUTODECO_VLLM_ALLOW_UNTESTED=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 128


def vllm_rate(llm, prompts: list[str], params) -> float:
    """Generated tokens per second for one batch (wall time of the whole generate call)."""
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def ours_rate(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    """Generated tokens per second of autodeco's engine, AutoDeco decoding, EOS ignored."""
    from autodeco import SamplingParams
    from autodeco.decoding import RowRequest, RunningBatch

    rows = [RowRequest(i, tokenizer(p).input_ids, SamplingParams(max_new_tokens=new_tokens, seed=i)) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    tokens = sum(1 for _ in RunningBatch(model, set()).run(rows))
    return tokens / (time.perf_counter() - start)


def plugin_step_ms(model, tokenizer, prompts: list[str], repeats: int = 20) -> dict[str, float]:
    """Milliseconds per decode step of what the plugin's compute_logits adds to the base's (the
    heads, their statistics and the nucleus mask) on real Gemma hidden states and logits at the
    last prompt position, against vLLM's own work for a static T=1 draw (softmax, exponential
    noise, argmax). Best of ``repeats``: the quiet-machine cost, not the noisy end-to-end one."""
    import torch

    from autodeco.integrations.vllm.model import learned_logits
    from autodeco.kv_cache import left_pad
    from autodeco.modeling import final_hidden_states, logits_from_hidden

    ids, mask = left_pad([tokenizer(p).input_ids for p in prompts], tokenizer.pad_token_id or 0, model.device)
    with torch.no_grad():
        hidden = final_hidden_states(model.llm, ids, mask)[:, -1].contiguous()
        logits = logits_from_hidden(model.llm, hidden)

    def best(run) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    def static_draw() -> torch.Tensor:  # vLLM's random_sample at T=1: probs / Exp(1) noise, argmax
        probs = logits.float().softmax(dim=-1)
        return probs.div_(torch.empty_like(probs).exponential_()).argmax(dim=-1)

    with torch.no_grad():
        return {"plugin_ms": best(lambda: learned_logits(model.heads, hidden, logits)), "static_draw_ms": best(static_draw)}


def markdown(result: dict, name: str) -> str:
    """The results table of one run (``--render`` rebuilds it from the JSON)."""
    from machine import machine_line

    lines = [
        f"# vLLM + AutoDeco plugin: {name}, {result['dtype']}, {result['new_tokens']} new tokens (EOS ignored), {result['repeats']} interleaved runs",
        "",
        "| batch | contender | tokens/s (median) | plugin / this (median, min-max over runs) |",
        "|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        low, high = row["plugin_over_this_range"]
        lines.append(f"| {row['batch']} | {row['contender']} | {row['tokens_per_s']:.1f} | {row['plugin_over_this']:.2f}x ({low:.2f}-{high:.2f}) |")
    if result["step_costs"]:
        greedy = {r["batch"]: 1000 * r["batch"] / r["tokens_per_s"] for r in result["rows"] if r["contender"] == "vLLM: greedy"}
        lines += [
            "", "What the plugin's compute_logits adds per decode step (heads, statistics, nucleus mask), timed alone on real",
            "Gemma logits (best of 20), against vLLM's step times from the medians above; for scale, the same batch's",
            "T=1 draw done in eager torch (softmax, Exp(1) noise, argmax; vLLM's own sampler is faster: its static T=1",
            "step minus its greedy step).", "",
            "| batch | plugin ms | vLLM greedy step ms | vLLM static T=1 step ms | plugin / static step | eager-torch T=1 draw ms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {c['batch']} | {c['plugin_ms']:.2f} | {greedy[c['batch']]:.1f} | {c['static_step_ms']:.1f} | {100 * c['plugin_share']:.1f}% | {c['static_draw_ms']:.2f} |"
            for c in result["step_costs"]
        ]
    lines += ["", machine_line(result["machine"]) + f" vLLM {result['machine']['vllm']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--name", default="gemma-3-270m")
    parser.add_argument("--skip-ours", action="store_true", help="only the vLLM contenders (e.g. on a GPU)")
    parser.add_argument("--render", action="store_true", help="rebuild the markdown table from the committed JSON, run nothing")
    args = parser.parse_args()
    if args.render:
        from autodeco.io import atomic_write_text

        result = json.loads((RESULTS / f"vllm_speed-{args.name}.json").read_text())
        atomic_write_text(markdown(result, args.name), RESULTS / f"vllm_speed-{args.name}.md")
        return

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from autodeco import AutoDecoModelForCausalLM
    from autodeco.models import load_tokenizer, resolve_heads, resolve_model
    from decode_speed import PROMPTS  # benchmarks/decode_speed.py: the same prompts as the engine benchmark
    from machine import machine_info

    base_dir, heads_dir = resolve_model("gemma-3-270m"), str(resolve_heads("gemma-3-270m"))
    common = dict(tokenizer=base_dir, dtype=args.dtype, max_model_len=1024, max_num_seqs=max(args.batches), generation_config="vllm", seed=0)
    engines = {"base": LLM(model=base_dir, **common), "plugin": LLM(model=heads_dir, **common)}
    device = "cuda" if torch.cuda.is_available() else None
    ours = None if args.skip_ours else AutoDecoModelForCausalLM.from_pretrained(heads_dir, dtype=getattr(torch, args.dtype), device=device)
    tokenizer = load_tokenizer(base_dir)

    def sampling(**fields):
        return [SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, seed=i, **fields) for i in range(max(args.batches))]

    contenders = {
        "vLLM: greedy": ("base", sampling(temperature=0.0)),
        "vLLM: static T=1": ("base", sampling(temperature=1.0, top_p=1.0)),
        "vLLM: static T=0.7 P=0.9": ("base", sampling(temperature=0.7, top_p=0.9)),
        "vLLM + AutoDeco plugin": ("plugin", sampling(temperature=1.0, top_p=1.0)),
    }
    rows, step_costs = [], []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        for engine, params in contenders.values():  # warm-up: first-call compilation and allocation
            vllm_rate(engines[engine], prompts, params[:batch])
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        if ours is not None:
            rates["ours: AutoDeco"] = []
            ours_rate(ours, tokenizer, prompts, 8)
        for repeat in range(args.repeats):
            for name, (engine, params) in contenders.items():
                rates[name].append(vllm_rate(engines[engine], prompts, params[:batch]))
            if ours is not None:
                rates["ours: AutoDeco"].append(ours_rate(ours, tokenizer, prompts, args.new_tokens))
            print(f"batch {batch} repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
        step = plugin_step_ms(ours, tokenizer, prompts) if ours is not None else {}
        plugin = rates["vLLM + AutoDeco plugin"]
        for name, values in rates.items():
            ratios = [p / v for p, v in zip(plugin, values)]  # paired by repeat: same moment of the run
            rows.append({
                "batch": batch, "contender": name, "tokens_per_s": statistics.median(values), "runs": values,
                "plugin_over_this": statistics.median(ratios), "plugin_over_this_range": [min(ratios), max(ratios)],
            })
        if step:  # what compute_logits adds, as a share of vLLM's static T=1 step (from its median rate)
            step_ms = 1000 * batch / statistics.median(rates["vLLM: static T=1"])
            step_costs.append({"batch": batch, **step, "static_step_ms": step_ms, "plugin_share": step["plugin_ms"] / step_ms})
            print(f"batch {batch}: compute_logits adds {step['plugin_ms']:.2f} ms to a {step_ms:.1f} ms step ({100 * step['plugin_ms'] / step_ms:.1f}%)", flush=True)

    machine = machine_info() | {"vllm": vllm.__version__}
    result = {"machine": machine, "new_tokens": args.new_tokens, "dtype": args.dtype, "repeats": args.repeats, "rows": rows, "step_costs": step_costs}
    RESULTS.mkdir(exist_ok=True)
    from autodeco.io import atomic_write_text

    atomic_write_text(json.dumps(result, indent=2) + "\n", RESULTS / f"vllm_speed-{args.name}.json")
    table = markdown(result, args.name)
    atomic_write_text(table, RESULTS / f"vllm_speed-{args.name}.md")
    print(table)
    print(f"wrote {RESULTS / f'vllm_speed-{args.name}.json'} and .md")


if __name__ == "__main__":
    main()
