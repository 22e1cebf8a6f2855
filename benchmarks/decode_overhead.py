"""What do the heads cost? Tokens/s of AutoDeco vs static sampling vs greedy in our engine, and
Hugging Face ``generate`` (greedy and ``do_sample=True, temperature=0.7, top_p=0.9``) on the same
base, same prompts, same number of new tokens, in one run.

    python benchmarks/decode_overhead.py                       # Llama config, 32k vocab (random weights)
    python benchmarks/decode_overhead.py --model DIR --name gemma-3-270m --dtype bfloat16

Writes benchmarks/results/decode_overhead-<name>.json and .md (machine and versions included).

On CPU, run it with glibc's allocator told to keep freed memory (as `make bench` does):

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/decode_overhead.py

With the defaults, every vocabulary-sized buffer (8 MB at batch 8 and a 262k vocabulary) is a
fresh mmap and page-faults on first touch; which contender pays for that varies from run to run,
and it swamps differences of a few percent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from autodeco import AutoDecoModelForCausalLM, SamplingParams
from autodeco.decoding import decode

RESULTS = Path(__file__).parent / "results"
MATCHED = "ours: static at AutoDeco's mean T, P"
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def llama_32k() -> transformers.PreTrainedModel:
    """A Llama of realistic shape for a small model: 32k vocab, hidden 512, 8 layers (~50M params)."""
    config = LlamaConfig(
        vocab_size=32_000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def prompts(batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(10, vocab, (batch, length), generator=generator)
    return ids, torch.ones_like(ids)


def time_ours(model, ids, mask, params: SamplingParams) -> float:
    start = time.perf_counter()
    steps = sum(1 for _ in decode(model, ids, mask, [params] * ids.shape[0], eos_token_ids=set()))
    assert steps == params.max_new_tokens
    return time.perf_counter() - start


def time_hf(base, ids, mask, new_tokens: int, **sampling) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = base.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, **sampling)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - start


def heads_cost_per_step(model, ids, mask, calls: int) -> float:
    """The heads alone on one decode step's tensors (hidden [B, 1, H], logits [B, 1, V]), in ms:
    the best of ``calls`` calls, the least disturbed by other load on the machine."""
    with torch.no_grad():
        out = model.llm(input_ids=ids, attention_mask=mask, logits_to_keep=1, output_hidden_states=True)
        hidden, logits = out.hidden_states[-1][:, -1:], out.logits
        best = math.inf
        for _ in range(calls):
            start = time.perf_counter()
            model.heads(hidden, logits)
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="A Hugging Face model folder; default: a Llama config with a 32k vocab.")
    parser.add_argument("--name", default="llama-32k")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval() if args.model else llama_32k().to(dtype)
    model = AutoDecoModelForCausalLM.from_base(base)
    vocab = base.config.get_text_config().vocab_size
    n = args.new_tokens
    rows, heads, matched = [], {}, {}
    for batch in [int(b) for b in args.batches.split(",")]:
        ids, mask = prompts(batch, args.prompt_length, vocab)
        # the control for AutoDeco's cost: static sampling at the mean T and P AutoDeco used here,
        # so both sample from nuclei of the same size and only the per-token prediction differs
        steps = list(decode(model, ids, mask, [SamplingParams(max_new_tokens=n, seed=0)] * batch, eos_token_ids=set()))
        mean_t = statistics.fmean(t for step in steps for t in step.temperatures)
        mean_p = statistics.fmean(p for step in steps for p in step.top_ps)
        matched[batch] = {"temperature": mean_t, "top_p": mean_p}
        contenders = {
            "ours: greedy": lambda ids, mask: time_ours(model, ids, mask, SamplingParams(decoding="greedy", max_new_tokens=n)),
            "ours: static T=0.7 P=0.9": lambda ids, mask: time_ours(model, ids, mask, SamplingParams(decoding="static", temperature=0.7, top_p=0.9, max_new_tokens=n, seed=0)),
            MATCHED: lambda ids, mask: time_ours(model, ids, mask, SamplingParams(decoding="static", temperature=mean_t, top_p=mean_p, max_new_tokens=n, seed=0)),
            "ours: AutoDeco": lambda ids, mask: time_ours(model, ids, mask, SamplingParams(max_new_tokens=n, seed=0)),
            "HF generate: greedy": lambda ids, mask: time_hf(base, ids, mask, n, do_sample=False),
            "HF generate: T=0.7 P=0.9": lambda ids, mask: time_hf(base, ids, mask, n, do_sample=True, temperature=0.7, top_p=0.9, top_k=None),
        }
        for run in contenders.values():  # warm-up: allocator, kernels, caches
            run(ids, mask)
        timings = {name: [] for name in contenders}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every contender alike
            for name, run in contenders.items():
                timings[name].append(run(ids, mask))
        for name, seconds in timings.items():
            best, median = min(seconds), statistics.median(seconds)
            rows.append({"batch": batch, "contender": name, "tokens_per_s": batch * n / best, "tokens_per_s_median": batch * n / median, "runs_s": seconds})
            print(f"batch {batch:>2}  {name:<28} {batch * n / best:8.1f} tok/s (best)  {batch * n / median:8.1f} (median)")
        heads[batch] = heads_cost_per_step(model, ids, mask, calls=200)
        print(f"batch {batch:>2}  heads per decode step: {heads[batch]:.2f} ms")

    def tps(batch: int, name: str) -> float:
        return next(r["tokens_per_s"] for r in rows if r["batch"] == batch and r["contender"] == name)

    ratios = {
        batch: {
            "autodeco_over_static_cost": tps(batch, MATCHED) / tps(batch, "ours: AutoDeco") - 1,
            "heads_share_of_static_step": heads[batch] / (1e3 * batch / tps(batch, MATCHED)),
            "autodeco_vs_hf_sampled": tps(batch, "ours: AutoDeco") / tps(batch, "HF generate: T=0.7 P=0.9"),
            "static_vs_hf_sampled": tps(batch, "ours: static T=0.7 P=0.9") / tps(batch, "HF generate: T=0.7 P=0.9"),
            "greedy_vs_hf_greedy": tps(batch, "ours: greedy") / tps(batch, "HF generate: greedy"),
        }
        for batch in sorted({r["batch"] for r in rows})
    }
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "allocator_env": {k: os.environ.get(k) for k in MALLOC_ENV},
    }
    setup = {"model": args.model or "LlamaConfig(vocab 32000, hidden 512, 8 layers), random weights", "name": args.name,
             "dtype": args.dtype, "vocab": vocab, "params": sum(p.numel() for p in base.parameters()),
             "prompt_length": args.prompt_length, "new_tokens": n, "repeats": args.repeats}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"decode_overhead-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps({"setup": setup, "machine": machine, "rows": rows, "heads_ms_per_step": heads, "matched_static": matched, "ratios": ratios}, indent=2) + "\n")
    matched_text = ", ".join(f"{b}: ({m['temperature']:.3f}, {m['top_p']:.3f})" for b, m in matched.items())
    lines = [
        f"# Decode overhead: {args.name}", "",
        f"`python benchmarks/decode_overhead.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items() if v is not None)}`", "",
        f"Model: {setup['model']} ({setup['params'] / 1e6:.0f}M params, vocab {vocab}, {args.dtype}); prompt {args.prompt_length} tokens, "
        f"{n} new tokens; best of {args.repeats} interleaved runs after a warm-up (medians in the JSON).", "",
        f"Machine: {machine['platform']}, {machine['processor']}, {machine['torch_threads']} torch threads; "
        f"torch {machine['torch']}, transformers {machine['transformers']}; allocator settings: "
        f"{', '.join(f'{k}={v}' for k, v in machine['allocator_env'].items() if v) or 'glibc defaults'}.", "",
        "| batch | contender | tokens/s (best) | tokens/s (median) |", "|---:|---|---:|---:|",
    ]
    lines += [f"| {r['batch']} | {r['contender']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s_median']:.1f} |" for r in rows]
    lines += [
        "", f"Matched static (T, P), the mean AutoDeco used, per batch size: {matched_text}.",
        "", "| batch | AutoDeco cost over matched static, end to end | heads per decode step (isolated) | AutoDeco / HF sampled | static / HF sampled | greedy / HF greedy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b} | {r['autodeco_over_static_cost'] * 100:+.1f}% | {heads[b]:.2f} ms = {r['heads_share_of_static_step'] * 100:.1f}% of a static step "
        f"| {r['autodeco_vs_hf_sampled']:.2f}x | {r['static_vs_hf_sampled']:.2f}x | {r['greedy_vs_hf_greedy']:.2f}x |"
        for b, r in ratios.items()
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
