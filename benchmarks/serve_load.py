"""Load on `autodeco serve`: the server runs in its own process, clients in this one, on loopback.

    python benchmarks/serve_load.py                       # a tiny random Llama (the issue's goal)
    python benchmarks/serve_load.py --model gemma-3-270m --heads gemma-3-270m --name gemma-3-270m

For 1, 8 and 32 concurrent clients, each sends streamed completions back to back (the same
prompts, seeds and max_tokens at every level) until ``--requests`` have been answered; measured:
requests/s, generated tokens/s, latency p50/p99, time to first token p50/p99, errors (goal: 0).
Goal (tiny model): throughput at 8 clients at least 4x that at 1 client. Writes
benchmarks/results/serve_load-<name>.json and .md.
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
from autodeco.io import atomic_write_text
from autodeco.tiny import tiny_model, tiny_tokenizer
from machine import machine_info, machine_line  # benchmarks/machine.py

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["Question: What is 2 + 3?", "Once upon a time", "The quick brown fox", "A journey of a thousand miles"]


def tiny_checkpoint(folder: Path) -> tuple[str, str]:
    """A tiny random Llama with its tokenizer, and untrained heads for it: (--model, --heads)."""
    base, heads = folder / "base", folder / "heads"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    torch.manual_seed(0)
    AutoDecoModelForCausalLM.from_base(tiny_model("llama")).save_pretrained(heads)
    return str(base), str(heads)


def start_server(model: str, heads: str, max_batch_size: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "autodeco.cli", "serve", "--model", model, "--heads", heads, "--port", str(port), "--max-batch-size", str(max_batch_size)]
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


async def one_request(client: httpx.AsyncClient, url: str, index: int, max_tokens: int) -> dict:
    """A streamed completion: latency, time to first token, tokens, or the error. Only the last
    chunk (usage) is parsed, to keep the client's own CPU use small."""
    body = {"prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": max_tokens, "seed": index, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
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
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    except httpx.HTTPError as error:
        return {"error": repr(error)}
    return {"latency": time.perf_counter() - start, "first_token": first, "tokens": tokens}


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
                    results.append(await one_request(client, url, queue.pop(0), max_tokens))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="--model for autodeco serve (default: a tiny random Llama)")
    parser.add_argument("--heads", help="--heads for autodeco serve")
    parser.add_argument("--name", default="tiny-llama")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        model, heads = (args.model, args.heads) if args.model else tiny_checkpoint(Path(folder))
        process, url = start_server(model, heads, max_batch_size=max(levels))
        try:
            load(url, 1, 2, 4)  # warm-up
            rows = []
            for clients in levels:
                rows.append(load(url, clients, max(args.requests, clients), args.max_tokens))
                r = rows[-1]
                print(f"{clients:>3} clients: {r['requests_per_s']:6.2f} req/s {r['tokens_per_s']:8.1f} tok/s  latency p50 {r['latency_p50_s']:.3f} s "
                      f"p99 {r['latency_p99_s']:.3f} s  first token p50 {r['first_token_p50_s']:.3f} s  errors {r['errors']}")
        finally:
            process.terminate()
            process.wait(timeout=30)

    base = rows[0]["tokens_per_s"]
    scaling = {r["clients"]: r["tokens_per_s"] / base for r in rows}
    command = f"python benchmarks/serve_load.py --name {args.name} --clients {args.clients} --requests {args.requests} --max-tokens {args.max_tokens}" + (
        f" --model {args.model} --heads {args.heads}" if args.model else "")
    machine = machine_info()
    stem = RESULTS / f"serve_load-{args.name}"
    atomic_write_text(json.dumps({"command": command, "machine": machine, "levels": rows, "throughput_vs_one_client": scaling}, indent=2) + "\n", stem.with_suffix(".json"))
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
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
