"""How fast do the heads train? Completion tokens/s, in one run, on the same base and data, of:

- naive: what the released trainer does each step: a full base forward (logits at every position),
  the heads, the losses with the full-vocabulary sort, autograd through [B, L, V] tensors;
- ours: ``Trainer.step`` (base forward for hidden states only, chunked sort-free losses);
- ours + cache: ``Trainer.step`` in a later epoch, from the feature cache (no base forward).

    python benchmarks/train_throughput.py --model ~/.cache/autodeco/gemma-3-270m --name gemma-3-270m
    python benchmarks/train_throughput.py --name tiny            # a tiny random Llama (vocab 384)

Writes benchmarks/results/train_throughput-<name>.json and .md (machine and versions included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoTokenizer

from autodeco import AutoDecoModelForCausalLM
from autodeco.heads import AutoDecoHeads
from autodeco.modeling import base_hidden_size, load_base
from autodeco.tiny import tiny_model, tiny_tokenizer
from autodeco.training.data import collate, load_examples
from autodeco.training.losses import dft_weights, easy_token_keep, soft_top_p_loss_reference, temperature_loss
from autodeco.training.trainer import TrainConfig, Trainer
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"


def write_data(path: Path, count: int) -> None:
    """Short arithmetic prompts with worked answers (throughput does not depend on who wrote them)."""
    lines = []
    for i in range(count):
        a, b = 17 + 3 * i, 5 + i
        completion = f" First add the tens and the ones: {a} + {b} = {a + b}. So the answer is {a + b}. Check: {a + b} - {b} = {a}."
        lines.append(json.dumps({"prompt": f"Question: What is {a} + {b}? Answer:", "completion": completion}))
    path.write_text("\n".join(lines) + "\n")


def naive_step(model: AutoDecoModelForCausalLM, optimizer, ids, mask, prompt_lengths) -> int:
    """One step as the released trainer computes it; returns the completion tokens it covered."""
    out = model.llm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden, logits = out.hidden_states[-1][:, :-1], out.logits[:, :-1].float()
    temperature, top_p = model.heads(hidden, logits)
    targets = ids[:, 1:]
    positions = torch.arange(targets.shape[1]).unsqueeze(0)
    valid = (positions >= (torch.tensor(prompt_lengths).unsqueeze(1) - 1)) & mask[:, 1:].bool()
    l, t, p, y = logits[valid], temperature[valid], top_p[valid], targets[valid]
    weights = dft_weights(l, y)
    keep = easy_token_keep(l, y, 0.6, torch.rand(y.shape))
    temp = (temperature_loss(l, t, y) * weights)[keep].mean()
    top = (soft_top_p_loss_reference(l, t, p, y) * weights).mean()
    (temp + top).backward()
    optimizer.step()
    optimizer.zero_grad()
    return int(valid.sum())


def timed(fn, repeats: int) -> list[float]:
    """Seconds per call, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="base model folder (default: a tiny random Llama)")
    parser.add_argument("--name", default="tiny")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    workdir = Path(tempfile.mkdtemp())
    if args.model:
        base_path = args.model
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    else:
        base_path = str(workdir / "base")
        tiny_model("llama").save_pretrained(base_path)
        tokenizer = tiny_tokenizer()
        tokenizer.save_pretrained(base_path)
    data = workdir / "data.jsonl"
    write_data(data, args.examples)
    examples, stats = load_examples(data, tokenizer, max_length=256)
    llm = load_base(base_path)
    model = AutoDecoModelForCausalLM(llm, AutoDecoHeads(base_hidden_size(llm.config)), base_name_or_path=base_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = examples[: args.batch_size]
    tokens_per_batch = sum(e.completion_length for e in batch)

    # naive
    params = [p for p in model.heads.parameters()]
    for p in params:
        p.requires_grad_(True)
    naive_optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids, mask = collate(batch, pad)
    naive = timed(lambda: naive_step(model, naive_optimizer, ids, mask, [e.prompt_length for e in batch]), args.repeats)

    # ours, without and with the feature cache: the same global batch per step
    config = TrainConfig(base=base_path, data=str(data), out=str(workdir / "run"), batch_size=args.batch_size, progress=False, epochs=1000)
    state = PartialState()
    trainer = Trainer(config, model, examples, pad, state)
    steps = iter(range(10**6))
    ours = timed(lambda: trainer.step(next(steps)), args.repeats)
    config.cache_features = "memory"
    trainer.build_cache(console=None)
    cached = timed(lambda: trainer.step(next(steps)), args.repeats)
    # steps cover different batches; normalise each by the tokens of the batches they ran
    step_tokens = statistics.mean(sum(e.completion_length for e in examples[i : i + args.batch_size]) for i in range(0, len(examples), args.batch_size))

    rows = [
        {"contender": "naive (released-style step: full forward, full sort)", "tokens_per_s": tokens_per_batch / statistics.median(naive), "ms_per_step": 1000 * statistics.median(naive)},
        {"contender": "ours (Trainer.step, base forward)", "tokens_per_s": step_tokens / statistics.median(ours), "ms_per_step": 1000 * statistics.median(ours)},
        {"contender": "ours + feature cache (later epochs)", "tokens_per_s": step_tokens / statistics.median(cached), "ms_per_step": 1000 * statistics.median(cached)},
    ]
    for row in rows:
        row["speedup_vs_naive"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    machine = machine_info()
    setup = {
        "model": args.name, "vocab": llm.config.get_text_config().vocab_size, "dtype": str(llm.dtype), "examples": len(examples),
        "batch_size": args.batch_size, "completion_tokens_per_batch": tokens_per_batch, "mean_sequence_length": statistics.mean(len(e.input_ids) for e in examples),
        "repeats": args.repeats,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"train_throughput-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps({"setup": setup, "machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Head-training throughput: {args.name}", "",
        f"Base {args.name} ({setup['dtype']}, vocab {setup['vocab']}), batch {args.batch_size} examples of ~{setup['mean_sequence_length']:.0f} tokens "
        f"({tokens_per_batch} completion tokens per batch); median of {args.repeats} steps after a warm-up.", "",
        "| contender | completion tokens/s | ms/step | vs naive |", "|---|---:|---:|---:|",
        *[f"| {r['contender']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.0f} | {r['speedup_vs_naive']:.2f}x |" for r in rows], "",
        machine_line(machine), "",
        f"Command: `python benchmarks/train_throughput.py{' --model ' + args.model if args.model else ''} --name {args.name}`",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
