"""Sampling math against independent references (Hugging Face's warpers, scipy statistics)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from autodeco import AutoDecoError, SamplingParams, sample_tokens, top_p_probs
from autodeco.sampling import BatchedSampling, apply_user_controls, counter_uniforms, entropy_temperature

P_VALUE_FLOOR = 1e-3  # chi-square/KS tests: fixed seeds, reject the sampler only below this p-value


def hf_reference(logits: torch.Tensor, temperature: float, top_p: float, top_k: int = 0, min_p: float = 0.0) -> torch.Tensor:
    """One row through Hugging Face's warpers, in their order: temperature, top-k, top-p, min-p."""
    scores = logits.unsqueeze(0).float()
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p:
        warpers.append(MinPLogitsWarper(min_p))
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1)[0]


def test_top_p_probs_matches_hugging_face_warpers_per_row():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=generator) * 3
    temperature = torch.tensor([0.3, 0.7, 1.0, 1.3, 2.0, 0.9])
    top_p = torch.tensor([0.1, 0.5, 0.9, 0.95, 0.99, 0.8])
    probs = top_p_probs(logits, temperature, top_p)
    for row in range(6):
        expected = hf_reference(logits[row], temperature[row].item(), top_p[row].item())
        torch.testing.assert_close(probs[row], expected, atol=1e-6, rtol=1e-5)


def test_top_k_and_min_p_follow_hugging_face_order():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 300, generator=generator) * 2
    temperature = torch.tensor([0.8, 1.2, 1.0, 0.5])
    top_p = torch.tensor([0.9, 0.7, 1.0, 0.95])
    top_k = torch.tensor([20, 0, 5, 50])
    min_p = torch.tensor([0.0, 0.05, 0.1, 0.2])
    probs = top_p_probs(logits, temperature, top_p, top_k=top_k, min_p=min_p)
    for row in range(4):
        expected = hf_reference(logits[row], temperature[row].item(), top_p[row].item(), int(top_k[row]), min_p[row].item())
        torch.testing.assert_close(probs[row], expected, atol=1e-6, rtol=1e-5)


def test_greedy_rows_are_a_point_mass_on_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [2.0, 0.0, 1.0, 5.0]])
    probs = top_p_probs(logits, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]))
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]  # ties: the first index, as argmax
    tokens = sample_tokens(logits, torch.zeros(2), torch.ones(2), generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == torch.argmax(logits, dim=-1).tolist()


def test_tokens_tied_at_the_nucleus_boundary_are_all_kept():
    # probabilities 0.4, 0.2, 0.2, 0.2: top_p 0.5 needs the 2nd token, which is tied with the 3rd and 4th
    logits = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]]))
    probs = top_p_probs(logits, torch.ones(1), torch.tensor([0.5]))
    torch.testing.assert_close(probs, torch.tensor([[0.4, 0.2, 0.2, 0.2]]))
    probs = top_p_probs(logits, torch.ones(1), torch.tensor([0.4]))
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_top_p_extremes():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    only_top = top_p_probs(logits, torch.ones(3), torch.zeros(3))
    assert torch.equal(only_top.argmax(-1), logits.argmax(-1)) and torch.all(only_top.max(-1).values == 1.0)
    everything = top_p_probs(logits, torch.ones(3), torch.ones(3))
    torch.testing.assert_close(everything, torch.softmax(logits, -1))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 64),
    temperature=st.floats(0.05, 3.0),
    top_p=st.floats(0.0, 1.0),
    scale=st.floats(0.1, 8.0),
)
def test_nucleus_properties(seed, vocab, temperature, top_p, scale):
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    probs = top_p_probs(logits, torch.tensor([temperature]), torch.tensor([top_p]))[0]
    full = torch.softmax(logits[0] / temperature, dim=-1)
    kept = probs > 0
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-5)
    assert kept[full.argmax()]  # the top token is always kept
    assert full[kept].min() >= full[~kept].max() if (~kept).any() else True  # a set of most likely tokens
    assert full[kept].sum() >= min(top_p, 1.0) - 1e-5  # it reaches top_p
    # smallest: without its least likely tokens (and their ties) it would not reach top_p
    smallest_kept = full[kept].min()
    assert full[kept & (full > smallest_kept)].sum() < top_p + 1e-5 or top_p >= 1.0


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token outside the nucleus"
    expected = probs[support].double() * counts.sum()
    return stats.chisquare(counts[support].numpy(), expected.numpy() / expected.sum().item() * counts.sum().item()).pvalue


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.5, 0.6), (0.3, 0.99)])
def test_sample_tokens_matches_top_p_probs_chi_square(temperature, top_p):
    draws = 40_000
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(3)) * 2
    probs = top_p_probs(logits, torch.tensor([temperature]), torch.tensor([top_p]))[0]
    rows = logits.expand(draws, -1)
    t, p = torch.full((draws,), temperature), torch.full((draws,), top_p)
    counter_draws = sample_tokens(rows, t, p, uniforms=counter_uniforms(torch.arange(draws), torch.zeros(draws)))
    generator_draws = sample_tokens(rows, t, p, generator=torch.Generator().manual_seed(4))
    assert _chi_square(counter_draws, probs) > P_VALUE_FLOOR
    assert _chi_square(generator_draws, probs) > P_VALUE_FLOOR


def test_counter_uniforms_are_uniform_and_independent():
    along_steps = counter_uniforms(torch.full((50_000,), 12345), torch.arange(50_000))
    across_seeds = counter_uniforms(torch.arange(50_000) * 7919, torch.full((50_000,), 3))
    for sample in (along_steps, across_seeds):
        assert stats.kstest(sample.numpy(), "uniform").pvalue > P_VALUE_FLOOR
        assert 0.0 <= sample.min().item() and sample.max().item() < 1.0
    lag_correlation = torch.corrcoef(torch.stack([along_steps[:-1], along_steps[1:]]))[0, 1].abs().item()
    assert lag_correlation < 0.02  # 50k pairs: the standard error of r is ~0.0045
    assert torch.equal(counter_uniforms(torch.tensor([5, 5]), torch.tensor([9, 9])), counter_uniforms(torch.tensor([5]), torch.tensor([9])).repeat(2))


def test_non_finite_logits_raise_instead_of_sampling_garbage():
    ones = torch.ones(2)
    for bad in (float("nan"), float("inf")):
        logits = torch.zeros(2, 10)
        logits[1, 3] = bad
        with pytest.raises(AutoDecoError, match=r"rows \[1\]"):
            sample_tokens(logits, ones, ones)
    with pytest.raises(AutoDecoError, match="non-finite"):
        sample_tokens(torch.full((1, 10), float("-inf")), torch.ones(1), torch.ones(1))
    with pytest.raises(AutoDecoError, match="non-finite"):
        sample_tokens(torch.zeros(1, 10), torch.tensor([float("nan")]), torch.ones(1))
    masked = torch.zeros(1, 10)
    masked[0, :5] = float("-inf")  # -inf entries are legal: those tokens are banned
    assert sample_tokens(masked, torch.ones(1), torch.ones(1)).item() >= 5


def test_user_controls_follow_the_released_semantics():
    learned_t, learned_p = torch.tensor([0.8, 1.6, 0.5]), torch.tensor([0.6, 0.9, 0.5])
    t, p = apply_user_controls(learned_t, learned_p, torch.tensor([0.5, 1.0, 0.0]), torch.tensor([1.5, 2.0, 1.0]))
    torch.testing.assert_close(t, torch.tensor([0.4, 1.6, 0.0]))  # multiplier; 0 is greedy
    torch.testing.assert_close(p, torch.tensor([0.9, 1.0, 0.5]))  # clamp(P * scale, 0, 1)
    t, p = apply_user_controls(learned_t, learned_p, 1.0, 1.0, t_min=0.6, t_max=1.0, p_min=0.55, p_max=0.8)
    torch.testing.assert_close(t, torch.tensor([0.8, 1.0, 0.6]))
    torch.testing.assert_close(p, torch.tensor([0.6, 0.8, 0.55]))


def test_batched_sampling_mixes_autodeco_static_and_greedy_rows():
    params = [
        SamplingParams(temperature_scale=0.5, p_max=0.7),
        SamplingParams(decoding="static", temperature=0.9, top_p=0.8),
        SamplingParams(decoding="greedy"),
    ]
    sampling = BatchedSampling.from_params(params)
    t, p = sampling.resolve(torch.tensor([1.2, 1.2, 1.2]), torch.tensor([0.9, 0.9, 0.9]))
    torch.testing.assert_close(t, torch.tensor([0.6, 0.9, 0.0]))
    torch.testing.assert_close(p, torch.tensor([0.7, 0.8, 1.0]))
    assert sampling.top_k is None and sampling.min_p is None


def test_dynatemp_maps_entropy_onto_the_temperature_range():
    vocab = 1000
    flat, peaked = torch.zeros(vocab), torch.full((vocab,), -1e4)
    peaked[7] = 0.0
    half = torch.full((vocab,), -math.inf)
    half[: int(vocab ** 0.5)] = 0.0  # uniform over sqrt(V) tokens: H / log V = 1/2
    logits = torch.stack([flat, peaked, half])
    low, high = torch.full((3,), 0.2), torch.full((3,), 1.4)
    t = entropy_temperature(logits, low, high, torch.ones(3))
    torch.testing.assert_close(t, torch.tensor([1.4, 0.2, 0.2 + 1.2 * math.log(31) / math.log(vocab)]), atol=1e-4, rtol=0)
    squared = entropy_temperature(logits, low, high, torch.full((3,), 2.0))
    assert squared[2] < t[2]  # an exponent above 1 keeps middling entropies cooler


def test_dynatemp_rows_mix_with_other_rows_and_need_the_logits():
    params = [SamplingParams(decoding="dynatemp", t_min=0.5, t_max=1.5, top_p=0.9), SamplingParams(decoding="static", temperature=0.7)]
    sampling = BatchedSampling.from_params(params)
    assert sampling.needs_entropy and not sampling.needs_heads
    t, p = sampling.resolve(None, None, logits=torch.zeros(2, 50))
    torch.testing.assert_close(t, torch.tensor([1.5, 0.7]))
    torch.testing.assert_close(p, torch.tensor([0.9, 1.0]))
    with pytest.raises(AutoDecoError, match="need the step's logits"):
        sampling.resolve(None, None)
    assert SamplingParams(decoding="dynatemp", t_min=0.0, t_max=0.0).is_greedy


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(decoding="dynatemp"), "give a finite t_max"),
        (dict(decoding="dynatemp", t_max=1.0, temperature=0.5), "not temperature"),
        (dict(dynatemp_exponent=0.0), "dynatemp_exponent"),
        (dict(temperature_scale=-1.0), "temperature_scale"),
        (dict(top_p_scale=float("nan")), "top_p_scale"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=0.7), "decoding='static'"),
        (dict(decoding="static", temperature_scale=2.0), "temperature_scale"),
        (dict(decoding="beam"), "unknown"),
        (dict(t_min=1.0, t_max=0.5), "t_min <= t_max"),
        (dict(top_k=-1), "top_k"),
        (dict(stop=("",)), "stop"),
        (dict(seed=-3), "seed"),
    ],
)
def test_sampling_params_reject_bad_values_with_a_named_problem(kwargs, message):
    with pytest.raises(AutoDecoError, match=message.replace("(", r"\(")):
        SamplingParams(**kwargs)
