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
from autodeco.sampling import (
    CANDIDATES,
    GREEDY_BELOW,
    BatchedSampling,
    NonFiniteRows,
    _draw,
    _full_nucleus,
    _threshold_nucleus,
    _probabilities,
    apply_user_controls,
    counter_uniforms,
    entropy_temperature,
    nucleus_logits,
    row_argmax,
    top_candidates,
)

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


def _binned_chi_square(tokens: torch.Tensor, probs: torch.Tensor, min_expected: float = 20.0) -> float:
    """Chi-square p-value of draws against ``probs [V]``, the support grouped (most likely
    first) into bins expected to hold at least ``min_expected`` draws each."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token outside the nucleus"
    order = probs.double().argsort(descending=True)[: int(support.sum())]
    expected = probs.double()[order] / probs.double()[order].sum() * counts.sum()
    bins = (expected.cumsum(0) / min_expected).floor().long().clamp_max(int(counts.sum() / min_expected) - 1)
    bins = bins.unique(return_inverse=True)[1]  # a very likely token spans several bins: close the gaps
    observed_bins = torch.zeros(int(bins.max()) + 1, dtype=torch.float64).index_add_(0, bins, counts[order])
    expected_bins = torch.zeros_like(observed_bins).index_add_(0, bins, expected)
    if observed_bins.numel() == 1:
        return 1.0
    return stats.chisquare(observed_bins.numpy(), expected_bins.numpy()).pvalue


def _adversarial_rows(vocab: int) -> dict[str, tuple[torch.Tensor, float, float, int, float, range]]:
    """Rows (logits, T, top_p, top_k, min_p, the nucleus sizes expected) that take every path of
    the fast sampler."""
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(vocab, generator=generator)
    straddling = base * 0.1 - 20.0  # the top token, then 100 tied tokens across the first list's end
    straddling[0], straddling[1:101] = 6.0, 1.0
    medium = base * 0.1
    medium[: CANDIDATES * 4] += 12.0 + torch.linspace(0, 1, CANDIDATES * 4)  # a nucleus of a few hundred tokens
    return {
        "flat: threshold list": (base * 0.3, 1.0, 0.9, 0, 0.0, range(2049, vocab)),
        "peaked: first list": (base * 4.0, 0.7, 0.9, 0, 0.0, range(2, CANDIDATES)),
        "a few hundred: threshold list": (medium, 1.0, 0.8, 0, 0.0, range(CANDIDATES + 1, 2048)),
        "ties straddle the first list's end": (straddling, 1.0, 0.7, 0, 0.0, range(101, 102)),
        "top_p near 0": (base * 2.0, 1.0, 1e-6, 0, 0.0, range(1, 2)),
        "top_p near 1": (base * 4.0, 1.0, 0.999999, 0, 0.0, range(2049, vocab)),
        "T near 0": (base * 2.0, 0.01, 0.9, 0, 0.0, range(1, 2)),
        "top_k past the first list": (base * 3.0, 1.0, 0.95, 3 * CANDIDATES, 0.0, range(CANDIDATES + 1, 3 * CANDIDATES)),
        "top_k of 4000": (base * 3.0, 1.0, 0.95, 4000, 0.0, range(CANDIDATES + 1, 4000)),
        "min_p alone": (base * 3.0, 1.0, 1.0, 0, 0.05, range(2, CANDIDATES)),
        "no filter: vocabulary order": (base * 2.0, 1.3, 1.0, 0, 0.0, range(vocab, vocab + 1)),
    }


def _sample_rows(logits, temperature, top_p, top_k, min_p, uniforms):
    draws = uniforms.numel()
    rows = logits.unsqueeze(0).expand(draws, -1)
    return sample_tokens(
        rows, torch.full((draws,), temperature), torch.full((draws,), top_p),
        top_k=torch.full((draws,), top_k) if top_k else None, min_p=torch.full((draws,), min_p) if min_p else None,
        uniforms=uniforms,
    )


@pytest.mark.parametrize("name", list(_adversarial_rows(16_384)))
def test_fast_sampler_matches_top_p_probs_on_adversarial_rows_chi_square(name):
    logits, temperature, top_p, top_k, min_p, nucleus_sizes = _adversarial_rows(16_384)[name]
    kwargs = dict(top_k=torch.tensor([top_k]) if top_k else None, min_p=torch.tensor([min_p]) if min_p else None)
    probs = top_p_probs(logits.unsqueeze(0), torch.tensor([temperature]), torch.tensor([top_p]), **kwargs)[0]
    assert int((probs > 0).sum()) in nucleus_sizes  # the row takes the path it is named for
    uniforms = counter_uniforms(torch.arange(4_000) + 17, torch.zeros(4_000))
    tokens = torch.cat([_sample_rows(logits, temperature, top_p, top_k, min_p, chunk) for chunk in uniforms.split(1_000)])
    assert _binned_chi_square(tokens, probs) > P_VALUE_FLOOR


def test_fast_sampler_draws_the_full_sort_token_at_vocab_262144():
    """Each uniform picks a token of the very rank the full sort would (the same token, up to
    the order of tokens tied in probability): the lists reproduce the sorted prefix and its
    cumulative mass exactly."""
    uniforms = counter_uniforms(torch.arange(24), torch.zeros(24))
    for name, (logits, temperature, top_p, top_k, min_p, _) in _adversarial_rows(262_144).items():
        if "vocabulary order" in name:
            continue  # not drawn in sorted order; the chi-square test covers it
        rows = logits.unsqueeze(0).expand(24, -1)
        t, p = torch.full((24,), temperature), torch.full((24,), top_p)
        k, m = (torch.full((24,), top_k) if top_k else None), (torch.full((24,), min_p) if min_p else None)
        probs = _probabilities(rows, t)
        reference = _draw(_full_nucleus(probs, probs.sum(dim=-1), p, k, m), uniforms)
        fast = _sample_rows(logits, temperature, top_p, top_k, min_p, uniforms)
        assert torch.equal(probs[0, fast], probs[0, reference]), name


def test_fast_sampler_ties_at_vocab_262144_chi_square():
    logits, temperature, top_p, _, _, nucleus_sizes = _adversarial_rows(262_144)["ties straddle the first list's end"]
    probs = top_p_probs(logits.unsqueeze(0), torch.tensor([temperature]), torch.tensor([top_p]))[0]
    assert int((probs > 0).sum()) in nucleus_sizes  # the top token and all 100 tied ones
    uniforms = counter_uniforms(torch.arange(2_000) + 5, torch.zeros(2_000))
    tokens = torch.cat([_sample_rows(logits, temperature, top_p, 0, 0.0, chunk) for chunk in uniforms.split(250)])
    assert _binned_chi_square(tokens, probs) > P_VALUE_FLOOR


def test_fast_sampler_sorts_only_rows_no_list_decides(monkeypatch):
    rows = _adversarial_rows(16_384)
    logits = torch.stack([r[0] for r in rows.values()])
    columns = [torch.tensor([r[i] for r in rows.values()]) for i in (1, 2, 3, 4)]
    sorted_rows = []

    def spy(probs, *args):
        sorted_rows.append(probs.shape[0])
        return _full_nucleus(probs, *args)

    monkeypatch.setattr("autodeco.sampling._full_nucleus", spy)
    temperature, top_p, top_k, min_p = columns
    sample_tokens(logits, temperature.float(), top_p.float(), top_k=top_k.long(), min_p=min_p.float(), uniforms=torch.rand(len(rows), dtype=torch.float64))
    assert sorted_rows == [1]  # top_k 4000: past the first list and, at this vocabulary, the threshold list


def test_long_nucleus_draws_inside_the_first_list_settle_without_finding_the_nucleus(monkeypatch):
    logits, temperature, top_p, _, _, _ = _adversarial_rows(16_384)["a few hundred: threshold list"]
    probs = _probabilities(logits.unsqueeze(0), torch.tensor([temperature]))[0]
    threshold_rows = []

    def spy(probs, *args):
        threshold_rows.append(probs.shape[0])
        return _threshold_nucleus(probs, *args)

    monkeypatch.setattr("autodeco.sampling._threshold_nucleus", spy)
    # u * mass lands on the most likely token for every possible nucleus mass; u near 1 lands past the list
    uniforms = torch.tensor([0.001, 0.999], dtype=torch.float64)
    tokens = _sample_rows(logits, temperature, top_p, 0, 0.0, uniforms)
    assert threshold_rows == [1]  # only the second draw needs the nucleus
    reference = _draw(_full_nucleus(probs.unsqueeze(0).expand(2, -1), probs.sum().expand(2), torch.full((2,), top_p), None, None), uniforms)
    assert torch.equal(probs[tokens], probs[reference])  # the token of the full sort's rank


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), blocks=st.integers(1, 40), extra=st.sampled_from([0, 37]), levels=st.integers(2, 50), k=st.integers(1, 300))
def test_block_searches_match_torch(seed, rows, blocks, extra, levels, k):
    """Few distinct values force ties inside and across blocks; a vocabulary that is not a
    multiple of the block takes the plain path."""
    vocab = blocks * 128 + extra
    values = torch.randint(0, levels, (rows, vocab), generator=torch.Generator().manual_seed(seed)).float()
    for typed in (values, values.bfloat16()):
        index, maximum = row_argmax(typed)
        assert torch.equal(index, typed.argmax(dim=-1)) and torch.equal(maximum, typed.amax(dim=-1))
    found, ids = top_candidates(values, k)
    assert torch.equal(found, values.topk(min(k, vocab), dim=-1).values)
    assert torch.equal(values.gather(-1, ids), found) and all(len(set(r)) == len(r) for r in ids.tolist())


def test_counter_uniforms_are_uniform_and_independent():
    along_steps = counter_uniforms(torch.full((50_000,), 12345), torch.arange(50_000))
    across_seeds = counter_uniforms(torch.arange(50_000) * 7919, torch.full((50_000,), 3))
    for sample in (along_steps, across_seeds):
        assert stats.kstest(sample.numpy(), "uniform").pvalue > P_VALUE_FLOOR
        assert 0.0 <= sample.min().item() and sample.max().item() < 1.0
    lag_correlation = torch.corrcoef(torch.stack([along_steps[:-1], along_steps[1:]]))[0, 1].abs().item()
    assert lag_correlation < 0.02  # 50k pairs: the standard error of r is ~0.0045
    assert torch.equal(counter_uniforms(torch.tensor([5, 5]), torch.tensor([9, 9])), counter_uniforms(torch.tensor([5]), torch.tensor([9])).repeat(2))


def test_non_finite_values_raise_naming_what_and_where():
    ones = torch.ones(2)
    for bad in (float("nan"), float("inf")):
        logits = torch.zeros(2, 10)
        logits[1, 3] = bad
        with pytest.raises(NonFiniteRows, match=r"float32 logits are NaN or infinite in batch rows \[1\] \(the base model's weights") as raised:
            sample_tokens(logits, ones, ones)
        assert raised.value.rows == [1] and "float16" not in str(raised.value)
    with pytest.raises(NonFiniteRows, match=r"float16 logits are NaN or infinite in batch rows \[0\] \(float16 overflows easily: load the model with dtype=bfloat16 or float32\)"):
        sample_tokens(torch.full((1, 10), float("-inf"), dtype=torch.float16), torch.ones(1), torch.ones(1))
    with pytest.raises(NonFiniteRows, match=r"the temperature is NaN in batch rows \[0\] \(the temperature head's weights"):
        sample_tokens(torch.zeros(1, 10), torch.tensor([float("nan")]), torch.ones(1))
    with pytest.raises(NonFiniteRows, match=r"the top-p is NaN in batch rows \[1\] \(the top-p head's weights"):
        sample_tokens(torch.zeros(2, 10), ones, torch.tensor([1.0, float("nan")]))
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


@pytest.mark.parametrize("vocab", [16_384, 262_144])
def test_nucleus_logits_softmax_is_top_p_probs(vocab):
    """The logits the vLLM plugin returns: their softmax is the exact distribution, with the same
    support, on every pure top-p adversarial row (first list, threshold list, ties, full sort),
    a greedy row and an uncut row, in one batch."""
    rows = [r for r in _adversarial_rows(vocab).values() if not r[3] and not r[4]]
    logits = torch.stack([r[0] for r in rows] + [rows[0][0], rows[0][0]])
    temperature = torch.tensor([r[1] for r in rows] + [0.0, 0.8])
    top_p = torch.tensor([r[2] for r in rows] + [0.5, 1.0])
    expected = top_p_probs(logits, temperature, top_p)
    # a float64 softmax: torch's float32 one over 262k entries is itself off by up to 2e-5 (relative)
    got = torch.softmax(nucleus_logits(logits, temperature, top_p).double(), dim=-1).float()
    assert torch.equal(got > 0, expected > 0)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert len(rows) >= 3 and int((got[-2] > 0).sum()) == 1


def test_nucleus_logits_reuse_the_heads_softmax():
    """With the statistics' softmax at T + 1e-8 and its top ids (what the heads hand over), the
    result is the same as recomputing at T."""
    from autodeco.heads import SoftmaxOut, probability_statistics

    torch.manual_seed(0)
    logits = torch.randn(6, 4096) * torch.tensor([0.5, 1, 2, 4, 8, 16]).unsqueeze(-1)
    temperature, top_p = torch.rand(6) + 0.3, torch.rand(6) * 0.9 + 0.05
    out = SoftmaxOut(torch.empty(6, 4096), torch.empty(6, CANDIDATES, dtype=torch.long))
    probability_statistics(logits, temperature, out)
    reused = nucleus_logits(logits, temperature, top_p, probs=out.probs, probs_top_ids=out.top_ids)
    assert torch.equal(reused, nucleus_logits(logits, temperature, top_p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [GREEDY_BELOW / 2, 1e-37, 1.78e-39, 1e-45])
def test_temperatures_below_the_float_range_are_greedy(temperature, dtype):
    """l / T would overflow float32 (Gemma's logits reach 30: 30 / 1e-37 > 3.4e38) and give NaN;
    such temperatures are defined as greedy, in every function that takes a temperature."""
    logits = (torch.randn(4, 1000, generator=torch.Generator().manual_seed(7)) * 30).to(dtype)
    t = torch.full((4,), temperature)
    argmax = logits.float().argmax(dim=-1)
    for top_p in (torch.ones(4), torch.full((4,), 0.9)):
        assert torch.equal(sample_tokens(logits, t, top_p, uniforms=torch.rand(4, generator=torch.Generator().manual_seed(0))), argmax)
        assert torch.equal(top_p_probs(logits, t, top_p), torch.nn.functional.one_hot(argmax, 1000).float())
        kept = nucleus_logits(logits, t, top_p)
        assert torch.equal(torch.isfinite(kept).nonzero()[:, 1], argmax)


def test_an_infinite_temperature_is_the_uniform_limit():
    """T = inf (a finite scale times a learned T can overflow float32) samples uniformly over the
    tokens not banned by a -inf logit, instead of failing."""
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(3)) * 5
    logits[:, :10] = float("-inf")
    t = torch.full((2,), math.inf)
    probs = top_p_probs(logits, t, torch.ones(2))
    torch.testing.assert_close(probs[:, 10:], torch.full((2, 40), 1 / 40))
    assert probs[:, :10].sum() == 0
    tokens = sample_tokens(logits, t, torch.ones(2), uniforms=torch.tensor([0.0, 0.999]))
    assert tokens.tolist() == [10, 49]
