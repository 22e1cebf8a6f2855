"""The exp2-based softmax shared by the top-p head's statistics and the sampler, against the
readable references: torch.softmax in float64 and the full-sort draw of sampling.py."""

import math

import pytest
import torch

from autodeco.heads import SoftmaxOut, probability_statistics, statistics_temperature
from autodeco.sampling import (
    CANDIDATES,
    LOG2_E,
    NonFiniteRows,
    _draw,
    _full_nucleus,
    _probabilities,
    sample_tokens,
    softmax_exponents,
)

VOCAB = 8192


def _rows(dtype: torch.dtype) -> torch.Tensor:
    """Peaked to flat rows, one with -inf logits and one with ties at the top, in ``dtype``."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, VOCAB, generator=generator) * torch.tensor([[16.0], [8.0], [4.0], [1.0], [0.1], [4.0]])
    logits[1, ::5] = -math.inf
    logits[5, :40] = 9.0  # tied across the first list's end
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_exponents_give_the_softmax_with_subnormals_flushed(dtype):
    logits = _rows(dtype)
    temperature = torch.tensor([0.05, 0.3, 0.7, 1.0, 1.9, 1e-3])
    z, ids = softmax_exponents(logits, LOG2_E / temperature.unsqueeze(-1), CANDIDATES)
    weights = torch.exp2(z)
    reference = torch.softmax(logits.double() / temperature.double().unsqueeze(-1), dim=-1)
    largest = reference.amax(dim=-1, keepdim=True)
    flushed = reference < largest * 2.0**-126
    assert flushed.any() and torch.equal(weights.amax(dim=-1), torch.ones(6))
    assert torch.equal(weights == 0, flushed | (reference == 0))  # zero exactly where subnormal or banned
    torch.testing.assert_close(weights.double() / weights.double().sum(dim=-1, keepdim=True), reference.masked_fill(flushed, 0.0), rtol=1e-5, atol=0)
    assert torch.isfinite(z).all()  # -inf logits give a finite exponent: q * z is 0, not NaN
    assert torch.equal(logits.float().gather(-1, ids), logits.float().topk(CANDIDATES).values)


def test_non_finite_logits_stay_visible_to_the_statistics_and_the_sampler():
    """The flush must not hide NaN or +inf logits: the statistics turn NaN and the sampler, reusing
    the heads' softmax, names those rows."""
    logits = _rows(torch.float32)[:4]
    logits[1, 7] = math.nan
    logits[2, 9] = math.inf
    logits[3] = -math.inf
    temperature = torch.full((4,), 0.6)
    out = SoftmaxOut.empty_for(logits)
    stats = probability_statistics(logits, temperature, out)
    assert torch.isfinite(stats[0]).all() and torch.isnan(stats[1:]).all()
    with pytest.raises(NonFiniteRows) as caught:
        sample_tokens(
            logits, temperature, torch.full((4,), 0.9), uniforms=torch.rand(4, dtype=torch.float64),
            probs=out.probs, probs_temperature=statistics_temperature(temperature), probs_top_ids=out.top_ids,
        )
    assert caught.value.rows == [1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_draws_the_full_sort_token_at_every_temperature_and_filter(dtype):
    """The sampler's own softmax (rows it does not reuse) picks the token of the very rank the
    reference full sort picks, from tiny to huge T, top-p near 0 and 1, with top-k and min-p."""
    logits = _rows(dtype).repeat(3, 1)
    rows = logits.shape[0]
    generator = torch.Generator().manual_seed(9)
    temperature = torch.tensor([1e-3, 0.05, 0.3, 0.7, 1.0, 1.3, 2.0, 50.0, math.inf]).repeat(2)[:rows]
    top_p = torch.tensor([1e-6, 0.5, 0.9, 0.999999, 1.0, 0.8]).repeat(3)[:rows]
    top_k = torch.tensor([0, 0, 3, 0, 100, 0]).repeat(3)[:rows]
    min_p = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.0, 0.02]).repeat(3)[:rows]
    for draw in range(8):
        uniforms = torch.rand(rows, generator=generator, dtype=torch.float64)
        fast = sample_tokens(logits, temperature, top_p, top_k=top_k, min_p=min_p, uniforms=uniforms)
        probs = _probabilities(logits, temperature)
        reference = _draw(_full_nucleus(probs, probs.sum(dim=-1), top_p, top_k, min_p), uniforms)
        untruncated = (top_p >= 1) & (top_k == 0) & (min_p == 0)  # drawn in vocabulary order, not by rank
        assert torch.equal(probs.gather(-1, fast[~untruncated, None]), probs.gather(-1, reference[~untruncated, None])), draw


def test_rows_sampled_off_the_heads_temperature_are_recomputed_with_their_ids():
    """Mixing reused and recomputed rows gives the tokens of recomputing every row."""
    logits = _rows(torch.bfloat16)
    learned = torch.tensor([0.3, 0.7, 1.0, 1.2, 0.5, 0.9])
    temperature = learned * torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0])  # user scales on rows 1, 3, 5
    top_p = torch.full((6,), 0.95)
    uniforms = torch.rand(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = SoftmaxOut.empty_for(logits)
    probability_statistics(logits, learned, out)
    mixed = sample_tokens(
        logits, temperature, top_p, uniforms=uniforms,
        probs=out.probs, probs_temperature=statistics_temperature(learned), probs_top_ids=out.top_ids,
    )
    assert torch.equal(mixed, sample_tokens(logits, temperature, top_p, uniforms=uniforms))
