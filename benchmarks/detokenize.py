"""Streaming detokenisation: the engine's incremental decoder vs re-decoding the whole answer at
every token (the naive way), on the same token ids, in one run.

    python benchmarks/detokenize.py --tokenizer DIR --name gemma-3-270m --tokens 1024

Writes benchmarks/results/detokenize-<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import transformers
from transformers import AutoTokenizer

from autodeco.engine import RowText

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="A tokenizer folder (e.g. the converted Gemma-3-270M).")
    parser.add_argument("--name", required=True)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    text = "The quick brown fox jumps over the lazy dog; café, naïve, 日本語, 😀. " * (args.tokens // 8)
    ids = tokenizer(text, add_special_tokens=False).input_ids[: args.tokens]

    start = time.perf_counter()
    row = RowText(tokenizer, (), set())
    for token in ids:
        row.add(token)
    incremental = time.perf_counter() - start
    start = time.perf_counter()
    for end in range(1, len(ids) + 1):
        tokenizer.decode(ids[:end], skip_special_tokens=True)
    naive = time.perf_counter() - start
    assert row.decoded == tokenizer.decode(ids, skip_special_tokens=True)

    result = {"tokenizer": args.tokenizer, "tokens": len(ids), "incremental_ms": incremental * 1e3, "redecode_ms": naive * 1e3,
              "speedup": naive / incremental, "transformers": transformers.__version__}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"detokenize-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(
        f"# Streaming detokenisation: {args.name}\n\n"
        f"`python benchmarks/detokenize.py --tokenizer {args.tokenizer} --name {args.name} --tokens {args.tokens}`\n\n"
        "| tokens in one answer | re-decode every step | incremental (engine) | speed-up |\n|---:|---:|---:|---:|\n"
        f"| {len(ids)} | {naive * 1e3:.0f} ms | {incremental * 1e3:.0f} ms | {naive / incremental:.1f}x |\n"
    )
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
