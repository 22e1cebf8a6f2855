"""Is vLLM's speculative decoding exact, with and without the AutoDeco plugin?

On a tiny Llama (the sharpened model of tests/integrations/vllm/test_speculative.py: n-gram drafts get
accepted), each arm draws 4,000 three-token samples and compares their joint law with the exact
one by a chi-square test (bins expected below 5 pooled):

- the plain base, static T=0.3 (a random base is too flat at T=1 for drafts to be accepted),
  without and with n-gram speculation (reference: softmax(l / 0.3); the first two tokens);
- the base + AutoDeco heads through the plugin, neutral request, without and with speculation
  (reference: top_p_probs at the learned T and P of every position).

    .venv-vllm/bin/python benchmarks/vllm_spec_exactness.py

Writes benchmarks/results/vllm_spec_exactness.json and .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "integrations" / "vllm"))

RESULTS = Path(__file__).parent / "results"
DRAWS, DEPTH = 4000, 3
SPECULATION = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2}
BASE_TEMPERATURE = 0.3


def base_law(base, prompt: list[int], depth: int) -> dict[tuple[int, ...], float]:
    """The exact law of the next tokens under softmax(l / BASE_TEMPERATURE) of a transformers base."""
    import torch

    paths = {(): 1.0}
    for _ in range(depth):
        prefixes = list(paths)
        with torch.no_grad():
            logits = base(input_ids=torch.tensor([prompt + list(p) for p in prefixes])).logits[:, -1].double()
        laws = torch.softmax(logits / BASE_TEMPERATURE, dim=-1)
        paths = {p + (t,): paths[p] * laws[i, t].item() for i, p in enumerate(prefixes) for t in range(laws.shape[1]) if laws[i, t] > 1e-7}
    return paths


def fit(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> dict:
    """Chi-square of the samples against the law, and the most likely paths side by side."""
    from collections import Counter

    from scipy.stats import chisquare

    counts = Counter(samples)
    paths = sorted(law, key=law.get, reverse=True)
    expected = [law[p] * len(samples) for p in paths]
    observed = [counts.get(p, 0) for p in paths]
    large = [i for i, e in enumerate(expected) if e >= 5]
    small = [i for i, e in enumerate(expected) if e < 5]
    obs = [observed[i] for i in large] + [sum(observed[i] for i in small) + sum(c for p, c in counts.items() if p not in law)]
    exp = [expected[i] for i in large] + [sum(expected[i] for i in small)]
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    scale = sum(obs) / sum(exp)
    return {
        "p_value": float(chisquare(obs, [e * scale for e in exp]).pvalue),
        "outside_support": sum(c for p, c in counts.items() if p not in law),
        "top_paths": [{"path": list(p), "expected": round(law[p] * len(samples), 1), "observed": counts.get(p, 0)} for p in paths[:4]],
    }


def main() -> None:
    import torch
    import vllm
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from autodeco import AutoDecoModelForCausalLM
    from autodeco.io import atomic_write_text
    from helpers import start_engine, write_checkpoint  # tests/integrations/vllm/helpers.py
    from test_speculative import SEED_PROMPT, joint_law

    root = Path(tempfile.mkdtemp(prefix="vllm-spec-"))
    checkpoint, base_dir = write_checkpoint(root, "llama", logit_scale=2.5)
    reference = AutoDecoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    prompt = reference.generate(torch.tensor([SEED_PROMPT]), do_sample=False, max_new_tokens=18, eos_token_id=[])[0].tolist()
    depths = {"base": 2, "plugin": DEPTH}
    laws = {"base": base_law(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), prompt, depths["base"]),
            "plugin": joint_law(reference, prompt, DEPTH)}
    rows = []
    for model in ("base", "plugin"):
        for speculative in (False, True):
            options = {"speculative_config": SPECULATION, "disable_log_stats": False} if speculative else {}
            if model == "base":
                engine = LLM(model=base_dir, dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=64, seed=0, **options)
            else:
                engine = start_engine(checkpoint, base_dir, **options)
            temperature = BASE_TEMPERATURE if model == "base" else 1.0
            params = [SamplingParams(max_tokens=DEPTH, temperature=temperature, top_p=1.0, seed=s, ignore_eos=True) for s in range(DRAWS)]
            samples = [tuple(r.outputs[0].token_ids[: depths[model]]) for r in engine.generate([{"prompt_token_ids": prompt}] * DRAWS, params, use_tqdm=False)]
            accepted = next((int(m.value) for m in engine.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens"), 0) if speculative else 0
            engine.llm_engine.engine_core.shutdown()
            rows.append({"model": model, "speculative": speculative, "tokens": depths[model], "accepted_drafts": accepted, **fit(samples, laws[model])})
            print(rows[-1], flush=True)

    result = {"vllm": vllm.__version__, "torch": torch.__version__, "draws": DRAWS, "depth": DEPTH, "speculation": SPECULATION, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", RESULTS / "vllm_spec_exactness.json")
    lines = [
        f"# Speculative decoding exactness on vLLM {vllm.__version__} (CPU), tiny Llama, {DRAWS} samples per arm",
        "",
        "| model | n-gram speculation | tokens tested | accepted drafts | chi-square p | most likely path: expected / observed | second: expected / observed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        first, second = row["top_paths"][:2]
        lines.append(
            f"| {row['model']} | {'yes' if row['speculative'] else 'no'} | {row['tokens']} | {row['accepted_drafts']} | {row['p_value']:.3g} | "
            f"{first['expected']} / {first['observed']} | {second['expected']} / {second['observed']} |"
        )
    lines += ["", f"base: the plain model at static T={BASE_TEMPERATURE}; plugin: the same base with AutoDeco heads, neutral request.", ""]
    atomic_write_text("\n".join(lines), RESULTS / "vllm_spec_exactness.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
