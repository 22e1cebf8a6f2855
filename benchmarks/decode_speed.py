"""Decoding speed: our greedy, AutoDeco and static sampling vs Hugging Face ``generate`` (greedy and
``do_sample=True, temperature=0.7, top_p=0.9`` on the base; and AutoDeco through Hugging Face's own
``generate`` on ``AutoDecoModelForCausalLM``), same model, prompts and new tokens, in one run;
prefill and decode timed apart. Then the sampler alone on real [B, V] logits against the sort-based
reference and Hugging Face's warpers.

    python benchmarks/decode_speed.py                                   # Gemma-3-270M, shipped heads
    python benchmarks/decode_speed.py --model llama-152k --name llama-152k

``--model llama-152k`` is a Llama config with a 152k vocabulary (hidden 512, 8 layers, random
weights, untrained heads). Its LM head is scaled so that logits have a standard deviation of 4, as
a trained model's do: with the raw initialisation every distribution is nearly uniform, which no
served model produces. Writes benchmarks/results/decode_speed-<name>.json and .md.

On CPU, run it with glibc's allocator told to keep freed memory (as ``make bench`` does):
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184``. With the defaults, every
vocabulary-sized buffer (8 MB at batch 8 and a 262k vocabulary) is a fresh mmap that page-faults
on first touch, and which contender pays for that varies from run to run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer

from autodeco import AutoDecoModelForCausalLM, SamplingParams
from autodeco.decoding import RowRequest, RunningBatch
from autodeco.io import atomic_write_text
from autodeco.kv_cache import left_pad
from autodeco.models import load_tokenizer
from autodeco.sampling import _draw, _full_nucleus, _probabilities, counter_uniforms, sample_tokens
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"
GREEDY, AUTODECO, STATIC = "ours: greedy", "ours: AutoDeco", "ours: static T=0.7 P=0.9"
HF_GREEDY, HF_SAMPLED = "HF generate: greedy", "HF generate: T=0.7 P=0.9"
HF_AUTODECO = "HF generate: AutoDeco"  # transformers' generate() on AutoDecoModelForCausalLM
PROMPTS = (
    "Question: Calculate 48 + 37.\nAnswer:",
    "Question: Sara has 5 pencils. She gives 2 to Tom. How many pencils does Sara have left?\nAnswer:",
    "The sea at night is",
    "Write a short poem about autumn leaves.\n",
    "Once upon a time, in a village by the mountains,",
    "The three most important ideas in thermodynamics are",
    "def fibonacci(n):\n",
    "Explain why the sky is blue in one paragraph.\n",
)


def llama_152k() -> transformers.PreTrainedModel:
    """A Llama of a small model's shape with a 152k vocabulary (Qwen2's size), random weights,
    its LM head scaled to give logits of standard deviation 4."""
    config = LlamaConfig(
        vocab_size=152_064, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, config.vocab_size, (4, 16))).logits
        model.lm_head.weight.mul_(4.0 / logits.std())
    return model


def prompt_batch(tokenizer, vocab: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` prompts (cycled), left-padded; random ids when there is no tokenizer."""
    if tokenizer is None:
        generator = torch.Generator().manual_seed(batch)
        rows = [torch.randint(10, vocab, (12 + row % 8,), generator=generator).tolist() for row in range(batch)]
    else:
        rows = [tokenizer(PROMPTS[row % len(PROMPTS)]).input_ids for row in range(batch)]
    return left_pad(rows, 0)


class _StepClock(BaseStreamer):
    """Timestamps of Hugging Face generate's token callbacks (the first is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def timed_ours(model, ids, mask, params: SamplingParams) -> tuple[float, float]:
    """(seconds to the first token: prefill and one sample, seconds for the remaining steps)."""
    rows = [RowRequest(i, prompt[m.bool()].tolist(), params) for i, (prompt, m) in enumerate(zip(ids, mask))]
    start = time.perf_counter()
    stamps = [time.perf_counter() for n, _ in enumerate(RunningBatch(model, set()).run(rows), 1) if n % len(rows) == 0]  # a row's token each
    assert len(stamps) == params.max_new_tokens
    return stamps[0] - start, stamps[-1] - stamps[0]


def timed_hf(model, ids, mask, new_tokens: int, **sampling) -> tuple[float, float]:
    """Hugging Face ``generate`` on ``model`` (the base, or AutoDecoModelForCausalLM): the same two timings.
    No EOS (``eos_token_id=[]``) rather than ``min_new_tokens``, whose processor would run before
    AutoDeco's and keep it from reusing the heads' softmax."""
    clock = _StepClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0, streamer=clock, **sampling)
    assert out.shape[1] == ids.shape[1] + new_tokens and len(clock.times) == new_tokens + 1
    return clock.times[1] - start, clock.times[-1] - clock.times[1]


CONTENDER_KEYS = {"greedy": GREEDY, "autodeco": AUTODECO, "static": STATIC, "hf-greedy": HF_GREEDY, "hf-sampled": HF_SAMPLED, "hf-autodeco": HF_AUTODECO}


def decode_rows(model, base, tokenizer, batches: list[int], new_tokens: int, repeats: int, names: list[str]) -> list[dict]:
    """The ``names`` contenders at every batch size, interleaved ``repeats`` times after a warm-up."""
    vocab = base.config.get_text_config().vocab_size
    rows = []
    for batch in batches:
        ids, mask = prompt_batch(tokenizer, vocab, batch)
        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            GREEDY: lambda: timed_ours(model, ids, mask, SamplingParams(decoding="greedy", max_new_tokens=new_tokens)),
            AUTODECO: lambda: timed_ours(model, ids, mask, SamplingParams(max_new_tokens=new_tokens, seed=0)),
            STATIC: lambda: timed_ours(model, ids, mask, SamplingParams(decoding="static", temperature=0.7, top_p=0.9, max_new_tokens=new_tokens, seed=0)),
            HF_GREEDY: lambda: timed_hf(base, ids, mask, new_tokens, do_sample=False),
            # top_k=0: no top-k cut, the same distribution as ours (HF's default would add top_k=50)
            HF_SAMPLED: lambda: timed_hf(base, ids, mask, new_tokens, do_sample=True, temperature=0.7, top_p=0.9, top_k=0),
            HF_AUTODECO: lambda: timed_hf(model, ids, mask, new_tokens, seed=0),
        }
        contenders = {name: contenders[name] for name in names}
        for run in contenders.values():  # warm-up: allocator, kernels, caches
            run()
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(repeats):  # interleaved, so drift in machine load hits every contender alike
            for name, run in contenders.items():
                timings[name].append(run())
        for name, runs in timings.items():
            first = min(r[0] for r in runs)
            decode_s = min(r[1] for r in runs)
            rows.append({
                "batch": batch, "contender": name, "prompt_tokens": int(mask.sum()),
                "first_token_ms": first * 1e3, "first_token_in_steps": first / (decode_s / (new_tokens - 1)),
                "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
                "tokens_per_s": batch * new_tokens / min(sum(r) for r in runs), "runs_s": runs,
            })
            print(f"batch {batch:>2}  {name:<26} first token {first * 1e3:7.1f} ms ({rows[-1]['first_token_in_steps']:.1f} steps)  "
                  f"decode {rows[-1]['decode_tokens_per_s']:7.1f} tok/s")
    return rows


def best_ms(run: Callable[[], object], calls: int) -> float:
    run()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def sort_reference(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Our sampler before this benchmark's issue: sort the whole row, inverse CDF over the nucleus."""
    probs = _probabilities(logits, temperature)
    return _draw(_full_nucleus(probs, probs.sum(dim=-1), top_p, None, None), uniforms)


def sampler_rows(model, tokenizer, batches: list[int], calls: int) -> list[dict]:
    """The sampler alone on [B, V] logits of real prompts (every prompt position: a mix of sure
    and open steps), at the heads' T and P and at static T=0.7, P=0.9."""
    vocab = model.config.get_text_config().vocab_size
    ids, mask = prompt_batch(tokenizer, vocab, len(PROMPTS))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    logits, learned_t, learned_p = out.logits[real], out.temperature[real].float(), out.top_p[real].float()
    rows = []
    for batch in batches:
        picked = torch.linspace(0, logits.shape[0] - 1, batch).long()
        x = logits[picked].contiguous()
        uniforms = counter_uniforms(torch.arange(batch), torch.zeros(batch))
        for setting, t, p in (("heads' T, P", learned_t[picked], learned_p[picked]), ("T=0.7, P=0.9", torch.full((batch,), 0.7), torch.full((batch,), 0.9))):
            warpers = (TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9))

            def hf_sampler() -> torch.Tensor:  # one T and P for the batch: all HF can do
                scores = x.float()
                for warper in warpers:
                    scores = warper(None, scores)
                return torch.multinomial(torch.softmax(scores, dim=-1), 1)

            timings = {
                "ours": best_ms(lambda: sample_tokens(x, t, p, uniforms=uniforms), calls),
                "sort-based reference": best_ms(lambda: sort_reference(x, t, p, uniforms), max(3, calls // 10)),
            }
            if setting.startswith("T=0.7"):
                timings["HF warpers + multinomial"] = best_ms(hf_sampler, max(3, calls // 10))
            for name, ms in timings.items():
                rows.append({"batch": batch, "setting": setting, "sampler": name, "ms": ms, "speedup_of_ours": ms / timings["ours"]})
                print(f"sampler  batch {batch:>2}  {setting:<13} {name:<26} {ms:8.2f} ms  ours is {ms / timings['ours']:.1f}x faster")
    return rows


def load(model_name: str) -> tuple[AutoDecoModelForCausalLM, transformers.PreTrainedModel, object, str]:
    if model_name == "llama-152k":
        base = llama_152k()
        return AutoDecoModelForCausalLM.from_base(base), base, None, "LlamaConfig(vocab 152064, hidden 512, 8 layers), random weights, untrained heads"
    model = AutoDecoModelForCausalLM.from_pretrained(model_name, dtype=torch.bfloat16)
    return model, model.llm, load_tokenizer(model.base_name_or_path), f"{model_name}, bf16, shipped heads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="heads checkpoint or alias (its base is loaded), or llama-152k")
    parser.add_argument("--name", default="gemma-3-270m")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler-calls", type=int, default=50, help="0: skip the sampler-alone section")
    parser.add_argument("--contenders", default=",".join(CONTENDER_KEYS), help=f"comma-separated, from {', '.join(CONTENDER_KEYS)}")
    args = parser.parse_args()
    names = [CONTENDER_KEYS[key] for key in args.contenders.split(",")]

    model, base, tokenizer, description = load(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    decoding = decode_rows(model, base, tokenizer, batches, args.new_tokens, args.repeats, names)
    sampler = sampler_rows(model, tokenizer, batches, args.sampler_calls) if args.sampler_calls else []
    rate = {(r["batch"], r["contender"]): r["decode_tokens_per_s"] for r in decoding}
    ratio_of = {
        "autodeco_vs_our_greedy": (AUTODECO, GREEDY), "autodeco_vs_hf_sampled": (AUTODECO, HF_SAMPLED), "static_vs_hf_sampled": (STATIC, HF_SAMPLED),
        "greedy_vs_hf_greedy": (GREEDY, HF_GREEDY), "hf_autodeco_vs_hf_sampled": (HF_AUTODECO, HF_SAMPLED), "hf_autodeco_vs_autodeco": (HF_AUTODECO, AUTODECO),
    }
    ratios = {batch: {key: rate[batch, a] / rate[batch, b] for key, (a, b) in ratio_of.items() if {a, b} <= set(names)} for batch in batches}
    machine = machine_info()
    vocab = base.config.get_text_config().vocab_size
    setup = {"model": description, "name": args.name, "vocab": vocab, "params": sum(p.numel() for p in base.parameters()),
             "new_tokens": args.new_tokens, "repeats": args.repeats, "command": f"python benchmarks/decode_speed.py --model {args.model} --name {args.name} --batches {args.batches} --new-tokens {args.new_tokens} --repeats {args.repeats} --sampler-calls {args.sampler_calls} --contenders {args.contenders}"}
    stem = RESULTS / f"decode_speed-{args.name}"
    atomic_write_text(json.dumps({"setup": setup, "machine": machine, "decoding": decoding, "ratios": ratios, "sampler": sampler}, indent=2) + "\n", stem.with_suffix(".json"))
    lines = [
        f"# Decoding speed: {args.name}", "", f"`{setup['command']}`", "",
        f"Model: {description} ({setup['params'] / 1e6:.0f}M params, vocab {vocab}); the prompts of the script, "
        f"{args.new_tokens} new tokens (no EOS stop); best of {args.repeats} interleaved runs after a warm-up. "
        "First token = prefill and one sample (also in decode steps of the same contender); decode = the other steps.", "",
        machine_line(machine), "",
        "| batch | contender | first token (ms) | first token (steps) | decode tokens/s | end to end tokens/s |", "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['batch']} | {r['contender']} | {r['first_token_ms']:.0f} | {r['first_token_in_steps']:.1f} | {r['decode_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} |"
              for r in decoding]
    titles = {"autodeco_vs_our_greedy": "AutoDeco / our greedy", "autodeco_vs_hf_sampled": "AutoDeco / HF sampled", "static_vs_hf_sampled": "static / HF sampled",
              "greedy_vs_hf_greedy": "greedy / HF greedy", "hf_autodeco_vs_hf_sampled": "HF AutoDeco / HF sampled", "hf_autodeco_vs_autodeco": "HF AutoDeco / our AutoDeco"}
    shown = [key for key in titles if key in ratios[batches[0]]]
    lines += ["", "Decode tokens/s ratios:", "", "| batch | " + " | ".join(titles[k] for k in shown) + " |", "|---:|" + "---:|" * len(shown)]
    lines += [f"| {b} | " + " | ".join(f"{r[k]:.2f}x" for k in shown) + " |" for b, r in ratios.items()]
    if sampler:
        lines += ["", f"The sampler alone on [B, {vocab}] logits of the prompts' positions (best of {args.sampler_calls} calls for ours):", "",
                  "| batch | T, P | sampler | ms per call | ours is faster by |", "|---:|---|---|---:|---:|"]
        lines += [f"| {r['batch']} | {r['setting']} | {r['sampler']} | {r['ms']:.2f} | {r['speedup_of_ours']:.1f}x |" for r in sampler]
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
