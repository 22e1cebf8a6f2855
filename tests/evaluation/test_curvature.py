"""The math behind benchmarks/evidence/curvature.py: l(beta) = beta z_y - logsumexp(beta z)."""

import math

import pytest
import torch

from autodeco.evaluation.curvature import best_constant_beta, best_shrinkage, compress_logits, decompose, likelihood_terms, pearson


def _rows(seed: int = 0, rows: int = 12, vocab: int = 50, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::3] = logits[::3].argmax(-1)  # some observed tokens are the argmax
    return logits, targets, logits.gather(-1, targets[:, None])[:, 0]


def test_matches_log_softmax_at_each_beta():
    logits, targets, z_y = _rows()
    beta = torch.linspace(0.2, 3.0, logits.shape[0], dtype=torch.float64)
    terms = likelihood_terms(logits, z_y, beta)
    expected = torch.log_softmax(beta[:, None] * logits, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(terms.ell, expected, rtol=0, atol=1e-12)


def test_concave_and_derivatives_match_finite_differences():
    logits, _, z_y = _rows(seed=1)
    betas = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0], dtype=torch.float64).expand(logits.shape[0], -1)
    terms = likelihood_terms(logits, z_y, betas)
    assert terms.ell.shape == betas.shape
    assert bool((terms.d2 <= 0).all())
    assert bool((terms.ell <= 1e-12).all())  # a log-probability
    step = 1e-5
    up, down = likelihood_terms(logits, z_y, betas + step), likelihood_terms(logits, z_y, betas - step)
    torch.testing.assert_close(terms.d1, (up.ell - down.ell) / (2 * step), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms.d2, (up.d1 - down.d1) / (2 * step), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms.d2, (up.ell - 2 * terms.ell + down.ell) / step**2, rtol=1e-3, atol=1e-3)


def test_concave_along_a_grid():
    logits, _, z_y = _rows(seed=2, rows=4)
    grid = torch.linspace(0.01, 10, 400, dtype=torch.float64).expand(4, -1)
    ell = likelihood_terms(logits, z_y, grid).ell
    second_differences = ell[:, 2:] - 2 * ell[:, 1:-1] + ell[:, :-2]
    assert bool((second_differences <= 1e-12).all())


def test_decomposition_sums_and_curvature_is_never_positive():
    logits, _, z_y = _rows(seed=3, rows=40)
    generator = torch.Generator().manual_seed(3)
    beta_t = 0.5 + 2 * torch.rand(40, generator=generator, dtype=torch.float64)
    for constant in (beta_t.mean().item(), 1 / (1 / beta_t).mean().item(), 1.7):
        at_tokens = likelihood_terms(logits, z_y, beta_t)
        at_constant = likelihood_terms(logits, z_y, constant)
        parts = decompose(at_tokens.ell, at_constant.ell, at_constant.d1, beta_t, constant)
        totals = parts.totals()
        direct = (at_tokens.ell - at_constant.ell).sum().item()
        assert totals["delta"] == pytest.approx(direct, abs=1e-10)
        assert totals["first_order"] + totals["curvature"] == pytest.approx(direct, abs=1e-10)
        assert bool((parts.curvature <= 1e-12).all())  # concavity, token by token
        # second order: the remainder is close to l''(b) (beta_t - b)^2 / 2 for small moves
    small = beta_t.mean() + 1e-3 * (beta_t - beta_t.mean())
    at_small, at_mean = likelihood_terms(logits, z_y, small), likelihood_terms(logits, z_y, beta_t.mean().item())
    remainder = decompose(at_small.ell, at_mean.ell, at_mean.d1, small, beta_t.mean().item()).curvature
    torch.testing.assert_close(remainder, 0.5 * at_mean.d2 * (small - beta_t.mean()).square(), rtol=1e-2, atol=1e-14)


def test_constant_beta_tokens_give_zero():
    logits, _, z_y = _rows(seed=4)
    beta = torch.full((logits.shape[0],), 1.3, dtype=torch.float64)
    at_tokens, at_constant = likelihood_terms(logits, z_y, beta), likelihood_terms(logits, z_y, 1.3)
    totals = decompose(at_tokens.ell, at_constant.ell, at_constant.d1, beta, 1.3).totals()
    assert totals == {"delta": 0.0, "first_order": 0.0, "curvature": 0.0}


def test_mean_beta_first_order_is_the_covariance():
    logits, _, z_y = _rows(seed=5, rows=30)
    beta_t = torch.linspace(0.4, 2.0, 30, dtype=torch.float64)
    mean = beta_t.mean().item()
    at_mean = likelihood_terms(logits, z_y, mean)
    first = decompose(likelihood_terms(logits, z_y, beta_t).ell, at_mean.ell, at_mean.d1, beta_t, mean).totals()["first_order"]
    covariance = ((beta_t - mean) * (at_mean.d1 - at_mean.d1.mean())).mean().item()
    assert first == pytest.approx(30 * covariance, rel=1e-10)
    sd = math.sqrt(((beta_t - mean) ** 2).mean().item() * ((at_mean.d1 - at_mean.d1.mean()) ** 2).mean().item())
    assert pearson(beta_t, at_mean.d1) == pytest.approx(covariance / sd, rel=1e-10)


def test_best_constant_beta_maximises_the_sum():
    logits, _, z_y = _rows(seed=6, rows=25)

    def derivatives(beta: float) -> tuple[float, float]:
        terms = likelihood_terms(logits, z_y, beta)
        return terms.d1.sum().item(), terms.d2.sum().item()

    beta, where = best_constant_beta(derivatives)
    assert where == "interior"
    assert abs(derivatives(beta)[0]) < 1e-7
    total = lambda b: likelihood_terms(logits, z_y, b).ell.sum().item()  # noqa: E731
    assert total(beta) >= max(total(beta * 0.99), total(beta * 1.01))


def test_best_constant_beta_at_the_bound_when_every_token_is_the_argmax():
    logits, _, _ = _rows(seed=7)
    z_y = logits.max(-1).values

    def derivatives(beta: float) -> tuple[float, float]:
        terms = likelihood_terms(logits, z_y, beta)
        return terms.d1.sum().item(), terms.d2.sum().item()

    assert best_constant_beta(derivatives, high=50.0) == (50.0, "at_high")


def test_compressed_logits_agree_with_the_full_vocabulary():
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 5000, generator=generator, dtype=torch.float64) * 4
    targets = torch.randint(0, 5000, (6,), generator=generator)
    z_y = logits.gather(-1, targets[:, None])[:, 0]
    values, log_weights = compress_logits(logits, top_k=64, bin_width=1 / 32)
    assert values.shape[1] < logits.shape[1]
    assert torch.exp(log_weights).sum(-1).tolist() == [5000.0] * 6  # every logit counted once
    for beta in (0.3, 1.0, 3.0):
        exact, compressed = likelihood_terms(logits, z_y, beta), likelihood_terms(values, z_y, beta, log_weights)
        torch.testing.assert_close(compressed.ell, exact.ell, rtol=0, atol=1e-4)
        torch.testing.assert_close(compressed.d1, exact.d1, rtol=0, atol=1e-3)
        torch.testing.assert_close(compressed.d2, exact.d2, rtol=1e-3, atol=1e-3)


def test_compression_keeps_small_vocabularies_exact():
    logits, _, z_y = _rows(seed=9, vocab=20)
    values, log_weights = compress_logits(logits, top_k=64)
    torch.testing.assert_close(likelihood_terms(values, z_y, 1.5, log_weights).ell, likelihood_terms(logits, z_y, 1.5).ell)


def test_best_shrinkage_beats_a_grid_and_the_best_constant():
    logits, _, z_y = _rows(seed=10, rows=60)
    generator = torch.Generator().manual_seed(10)
    beta_t = 0.5 + 3 * torch.rand(60, generator=generator, dtype=torch.float64)
    evaluate = lambda betas: likelihood_terms(logits, z_y, betas)  # noqa: E731
    b, lam = best_shrinkage(evaluate, beta_t)
    d = beta_t - beta_t.mean()
    best = evaluate(b + lam * d).ell.sum().item()
    for grid_b in torch.linspace(0.2, 3.0, 15).tolist():
        for grid_lam in torch.linspace(-1.0, 1.0, 11).tolist():
            betas = grid_b + grid_lam * d
            if bool((betas > 0).all()):
                assert evaluate(betas).ell.sum().item() <= best + 1e-9

    def derivatives(beta: float) -> tuple[float, float]:
        terms = likelihood_terms(logits, z_y, beta)
        return terms.d1.sum().item(), terms.d2.sum().item()

    constant, _ = best_constant_beta(derivatives)
    assert best >= likelihood_terms(logits, z_y, constant).ell.sum().item() - 1e-9


def test_best_shrinkage_of_constant_heads_is_the_best_constant():
    logits, _, z_y = _rows(seed=11, rows=30)
    evaluate = lambda betas: likelihood_terms(logits, z_y, betas)  # noqa: E731
    b, lam = best_shrinkage(evaluate, torch.full((30,), 2.0, dtype=torch.float64))

    def derivatives(beta: float) -> tuple[float, float]:
        terms = likelihood_terms(logits, z_y, beta)
        return terms.d1.sum().item(), terms.d2.sum().item()

    assert b == pytest.approx(best_constant_beta(derivatives)[0], rel=1e-6)
