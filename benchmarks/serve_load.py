"""Load on `autodeco serve`: the server runs in its own process, clients in this one, on loopback.

    python benchmarks/serve_load.py                       # a tiny random Llama (the issue's goal)
    python benchmarks/serve_load.py --model gemma-3-270m --heads gemma-3-270m --name gemma-3-270m

For 1, 8 and 32 concurrent clients, each sends streamed completions back to back (the same
prompts, seeds and max_tokens at every level) until ``--requests`` have been answered; measured:
requests/s, generated tokens/s, latency p50/p99, time to first token p50/p99, errors (goal: 0).
Goal (tiny model): throughput at 8 clients at least 4x that at 1 client.

Then ``n`` choices of one few-shot prompt (``--n-choices``, default 8; 0 skips this): one client
sends ``--n-requests`` such requests to a server with prefix sharing (the prompt prefilled once for
all choices) and as many to a second server with ``--no-prefix-sharing`` (``n`` separate
prefills), alternating between the two so both see the same machine load; measured: tokens/s of
each and their ratio (goal on Gemma-3-270M: at least 3x). Both give the same tokens.

Writes benchmarks/results/serve_load-<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from autodeco import AutoDecoModelForCausalLM
from autodeco.evaluation.tasks import few_shot_prompt
from autodeco.io import atomic_write_text
from autodeco.tiny import tiny_model, tiny_tokenizer
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["Question: What is 2 + 3?", "Once upon a time", "The quick brown fox", "A journey of a thousand miles"]
# an eval-style prompt: worked examples, then the question; a few hundred tokens, so prefill matters
FEW_SHOT_PROMPT = few_shot_prompt([
    ("A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 29 of them and gives 5 to her neighbours. "
     "How many muffins does she have left?",
     "She makes 24 + 18 = 42 muffins. She sells 29 and gives away 5, so 29 + 5 = 34 muffins are gone. "
     "She has 42 - 34 = 8 muffins left. The answer is 8."),
    ("A train travels at 60 kilometres per hour for 2 hours, then at 80 kilometres per hour for 3 hours. "
     "How far does it travel in total?",
     "In the first part it travels 60 * 2 = 120 kilometres. In the second part it travels 80 * 3 = 240 kilometres. "
     "In total it travels 120 + 240 = 360 kilometres. The answer is 360."),
    ("Tom has three times as many marbles as Sara. Sara has 7 more marbles than Ben, and Ben has 5 marbles. "
     "How many marbles do the three of them have together?",
     "Ben has 5 marbles. Sara has 5 + 7 = 12 marbles. Tom has 3 * 12 = 36 marbles. "
     "Together they have 5 + 12 + 36 = 53 marbles. The answer is 53."),
], "A farmer has 48 eggs. He puts them in boxes of 6 and sells each box for $2.50. He keeps 2 boxes for himself. "
   "How much money does he make from the boxes he sells?")


def tiny_checkpoint(folder: Path) -> tuple[str, str]:
    """A tiny random Llama with its tokenizer, and untrained heads for it: (--model, --heads)."""
    base, heads = folder / "base", folder / "heads"
    model = tiny_model("llama")
    model.config.max_position_embeddings = 2048  # room for FEW_SHOT_PROMPT in its byte tokens (RoPE has no length of its own)
    model.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    torch.manual_seed(0)
    AutoDecoModelForCausalLM.from_base(tiny_model("llama")).save_pretrained(heads)
    return str(base), str(heads)


def start_server(model: str, heads: str, max_batch_size: int, prefix_sharing: bool = True) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "autodeco.cli", "serve", "--model", model, "--heads", heads, "--port", str(port), "--max-batch-size", str(max_batch_size),
               "--prefix-sharing" if prefix_sharing else "--no-prefix-sharing"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not start within 10 minutes")


def completion(prompt: str, seed: int, max_tokens: int, n: int = 1) -> dict:
    """The body of a streamed completion request that reports its usage."""
    return {"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "n": n, "stream": True, "stream_options": {"include_usage": True}}


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """A streamed completion: latency, time to first token, tokens (all choices') and prompt
    tokens, or the error. Only the last chunk (usage) is parsed, to keep the client's own CPU use small."""
    start = time.perf_counter()
    first, usage = None, {"completion_tokens": 0, "prompt_tokens": 0}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                if '"error"' in line[:20]:
                    return {"error": json.loads(line[6:])["error"]["message"]}
                if first is None and '"text"' in line:
                    first = time.perf_counter() - start
                if '"usage": {' in line:
                    usage = json.loads(line[6:])["usage"]
    except httpx.HTTPError as error:
        return {"error": repr(error)}
    return {"latency": time.perf_counter() - start, "first_token": first, "tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` completions from ``clients`` concurrent clients (one event loop)."""

    async def run() -> list[dict]:
        queue = list(range(requests))
        results: list[dict] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits) as client:
            async def worker() -> None:
                while queue:
                    index = queue.pop(0)
                    results.append(await one_request(client, url, completion(PROMPTS[index % len(PROMPTS)], index, max_tokens)))

            await asyncio.gather(*(worker() for _ in range(clients)))
        return results

    start = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]
    latencies, firsts = [r["latency"] for r in good], [r["first_token"] for r in good if r["first_token"] is not None]
    return {
        "clients": clients, "requests": requests, "errors": len(results) - len(good), "wall_s": wall,
        "requests_per_s": len(good) / wall, "tokens_per_s": sum(r["tokens"] for r in good) / wall,
        "latency_p50_s": percentile(latencies, 0.5), "latency_p99_s": percentile(latencies, 0.99),
        "first_token_p50_s": percentile(firsts, 0.5), "first_token_p99_s": percentile(firsts, 0.99),
        "error_messages": sorted({r["error"] for r in results if "error" in r})[:5],
    }


def compare_prefix_sharing(urls: dict[str, str], n: int, requests: int, max_tokens: int) -> dict:
    """``requests`` requests for ``n`` choices of FEW_SHOT_PROMPT to each server of ``urls``
    ({"shared": prefix sharing, "separate": none}), one at a time, the servers taking turns (and
    turns at going first) so that the machine's drifting load falls on both alike."""

    async def run() -> dict[str, list[dict]]:
        results: dict[str, list[dict]] = {name: [] for name in urls}
        async with httpx.AsyncClient() as client:
            for url in urls.values():  # warm-up: the first long prefill of a server is slower
                await one_request(client, url, completion(FEW_SHOT_PROMPT, 10_000, 2, n))
            for index in range(requests):
                for name in (list(urls) if index % 2 == 0 else list(urls)[::-1]):
                    results[name].append(await one_request(client, urls[name], completion(FEW_SHOT_PROMPT, index, max_tokens, n)))
        return results

    results = asyncio.run(run())
    errors = sorted({f"{name}: {r['error']}" for name, answered in results.items() for r in answered if "error" in r})
    if errors:  # a failed request did less work: no comparison to be made
        raise SystemExit(f"the n={n} comparison had failed requests: {'; '.join(errors[:5])}")
    summary: dict = {"n": n, "requests": requests, "max_tokens": max_tokens, "prompt_tokens": results["shared"][0]["prompt_tokens"]}
    for name, answered in results.items():
        tokens, seconds = sum(r["tokens"] for r in answered), sum(r["latency"] for r in answered)  # one request at a time: the time this server worked
        summary[name] = {
            "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "latency_p50_s": percentile([r["latency"] for r in answered], 0.5), "first_token_p50_s": percentile([r["first_token"] for r in answered if r["first_token"] is not None], 0.5),
        }
    summary["speedup"] = summary["shared"]["tokens_per_s"] / summary["separate"]["tokens_per_s"]
    # the same seeds give the same tokens on both servers: a differing count would mean unequal work
    summary["same_token_counts"] = [r["tokens"] for r in results["shared"]] == [r["tokens"] for r in results["separate"]]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="--model for autodeco serve (default: a tiny random Llama)")
    parser.add_argument("--heads", help="--heads for autodeco serve")
    parser.add_argument("--name", default="tiny-llama")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n-choices", type=int, default=8, help="choices per request when comparing prefix sharing with none (0: no comparison)")
    parser.add_argument("--n-requests", type=int, default=6, help="requests to each server in that comparison")
    parser.add_argument("--n-max-tokens", type=int, default=16, help="max_tokens of those requests")
    args = parser.parse_args()

    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        model, heads = (args.model, args.heads) if args.model else tiny_checkpoint(Path(folder))
        size = max(levels + [args.n_choices])
        servers = {"shared": start_server(model, heads, size)}
        if args.n_choices:
            servers["separate"] = start_server(model, heads, size, prefix_sharing=False)
        url = servers["shared"][1]
        try:
            load(url, 1, 2, 4)  # warm-up
            rows = []
            for clients in levels:
                rows.append(load(url, clients, max(args.requests, clients), args.max_tokens))
                r = rows[-1]
                print(f"{clients:>3} clients: {r['requests_per_s']:6.2f} req/s {r['tokens_per_s']:8.1f} tok/s  latency p50 {r['latency_p50_s']:.3f} s "
                      f"p99 {r['latency_p99_s']:.3f} s  first token p50 {r['first_token_p50_s']:.3f} s  errors {r['errors']}")
            sharing = None
            if args.n_choices:
                sharing = compare_prefix_sharing({name: u for name, (_, u) in servers.items()}, args.n_choices, args.n_requests, args.n_max_tokens)
                print(f"n={args.n_choices} ({sharing['prompt_tokens']}-token prompt, max_tokens {args.n_max_tokens}): prefix sharing "
                      f"{sharing['shared']['tokens_per_s']:.1f} tok/s, separate prefills {sharing['separate']['tokens_per_s']:.1f} tok/s, "
                      f"{sharing['speedup']:.2f}x")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)

    base = rows[0]["tokens_per_s"]
    scaling = {r["clients"]: r["tokens_per_s"] / base for r in rows}
    command = (f"python benchmarks/serve_load.py --name {args.name} --clients {args.clients} --requests {args.requests} --max-tokens {args.max_tokens} "
               f"--n-choices {args.n_choices} --n-requests {args.n_requests} --n-max-tokens {args.n_max_tokens}") + (
        f" --model {args.model} --heads {args.heads}" if args.model else "")
    machine = machine_info()
    stem = RESULTS / f"serve_load-{args.name}"
    results = {"command": command, "machine": machine, "levels": rows, "throughput_vs_one_client": scaling, "prefix_sharing": sharing}
    atomic_write_text(json.dumps(results, indent=2) + "\n", stem.with_suffix(".json"))
    lines = [
        f"# Serving load: {args.name}", "", f"`{command}`", "",
        f"Streamed completions of {args.max_tokens} tokens (seeded, learned decoding), {args.requests} requests per level; "
        "server (`autodeco serve`) and clients in separate processes on loopback.", "", machine_line(machine), "",
        "| clients | requests/s | tokens/s | vs 1 client | latency p50 (s) | latency p99 (s) | first token p50 (s) | first token p99 (s) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {scaling[r['clients']]:.2f}x | {r['latency_p50_s']:.3f} | "
        f"{r['latency_p99_s']:.3f} | {r['first_token_p50_s']:.3f} | {r['first_token_p99_s']:.3f} | {r['errors']} |"
        for r in rows
    ]
    if sharing is not None:
        lines += [
            "", f"## n={sharing['n']}: prefix sharing against {sharing['n']} separate prefills", "",
            f"One client sends {sharing['requests']} streamed requests for n={sharing['n']} seeded choices of one few-shot prompt "
            f"({sharing['prompt_tokens']} tokens), max_tokens {sharing['max_tokens']}, to each of two servers, taking turns: one with "
            "`--prefix-sharing` (the prompt prefilled once for all choices) and one with `--no-prefix-sharing` (each choice prefilled on its own). "
            "With the same seeds both give the same tokens "
            f"({'their counts agree in this run' if sharing['same_token_counts'] else 'BUT their counts differ in this run'}). "
            "Tokens/s: the choices' tokens over the time the server took for its requests.", "",
            "| server | tokens/s | latency p50 (s) | first token p50 (s) |", "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {label} | {r['tokens_per_s']:.1f} | {r['latency_p50_s']:.3f} | {r['first_token_p50_s']:.3f} |"
            for label, r in (("`--prefix-sharing`", sharing["shared"]), ("`--no-prefix-sharing`", sharing["separate"]))
        ]
        lines += ["", f"Prefix sharing: **{sharing['speedup']:.2f}x** the tokens/s of separate prefills."]
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
