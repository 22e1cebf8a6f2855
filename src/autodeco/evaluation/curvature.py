"""Token-level or constant inverse temperature: the teacher-forced log-likelihood and its curvature.

For one position with unscaled logits ``z`` and observed next token ``y``, decoding at inverse
temperature ``beta = 1/T`` gives the log-likelihood

    l(beta)   = beta * z_y - logsumexp(beta * z)
    l'(beta)  = z_y - E_q[z]            (q = softmax(beta * z))
    l''(beta) = -Var_q[z]  <= 0         (so l is concave in beta)

Comparing the heads' per-token ``beta_t`` with a constant ``b`` over a set of tokens:

    dLL = sum_t [l_t(beta_t) - l_t(b)]
        = sum_t l'_t(b) * (beta_t - b)                                   first-order ("informative") term
        + sum_t [l_t(beta_t) - l_t(b) - l'_t(b) * (beta_t - b)]          exact Taylor remainder (<= 0: curvature)

With ``b`` the mean of ``beta_t`` the first-order term is ``n * cov(beta_t, l'_t(b))``: positive only
when the heads sharpen (raise beta) where sharpening raises the likelihood. The remainder is minus
the integral of ``Var_q[z] * (beta_t - s)`` between ``b`` and ``beta_t``: what varying beta costs.

Everything here is float64 and pure (tensors in, tensors out). A weighted form, ``log_weights``,
evaluates the same quantities on a compressed vocabulary (:func:`compress_logits`: the top logits
exactly plus the rest binned), which is what a 1-D search over a constant beta runs on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LikelihoodTerms:
    """Per position: ``ell`` = l(beta), ``d1`` = l'(beta), ``d2`` = l''(beta); float64, the shape of beta."""

    ell: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor


def likelihood_terms(
    logits: torch.Tensor, target_logit: torch.Tensor, beta: torch.Tensor | float, log_weights: torch.Tensor | None = None,
) -> LikelihoodTerms:
    """l, l' and l'' at ``beta`` for each row of ``logits [N, V]`` whose observed token has the
    logit ``target_logit [N]``.

    ``beta``: a number, ``[N]`` (one value per row) or ``[N, K]`` (K values per row; the result
    is then ``[N, K]``). ``log_weights [N, V]``: the row is a weighted set of logit values (a
    value of weight w counts as w tokens of that logit; -inf drops an entry), as
    :func:`compress_logits` makes them. Computed in float64, relative to each row's largest logit.
    """
    z = logits.double()
    top = z.max(dim=-1, keepdim=True).values
    u = z - top  # <= 0; q does not change
    u_y = target_logit.double().to(z.device) - top.squeeze(-1)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=z.device)
    columns = beta.dim() == 2
    betas = beta if columns else beta.expand(z.shape[0]).unsqueeze(-1)
    log_w = None if log_weights is None else log_weights.double().to(z.device)
    ell, d1, d2 = (torch.empty(betas.shape, dtype=torch.float64, device=z.device) for _ in range(3))
    for k in range(betas.shape[1]):
        b = betas[:, k : k + 1]
        scaled = b * u if log_w is None else b * u + log_w
        lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
        q = torch.exp(scaled - lse)
        mean = (q * u).sum(-1, keepdim=True)
        var = (q * (u - mean).square()).sum(-1)
        ell[:, k] = b.squeeze(-1) * u_y - lse.squeeze(-1)
        d1[:, k] = u_y - mean.squeeze(-1)
        d2[:, k] = -var
    if not columns:
        ell, d1, d2 = ell.squeeze(-1), d1.squeeze(-1), d2.squeeze(-1)
    return LikelihoodTerms(ell, d1, d2)


@dataclass(frozen=True)
class Decomposition:
    """Per-token parts of ``dLL = l(beta_t) - l(b)``: ``first_order + curvature`` (exact)."""

    delta: torch.Tensor
    first_order: torch.Tensor
    curvature: torch.Tensor

    def totals(self, mask: torch.Tensor | None = None) -> dict[str, float]:
        """Sums over the tokens (those of ``mask`` when given)."""
        pick = (lambda t: t) if mask is None else (lambda t: t[mask])
        return {"delta": pick(self.delta).sum().item(), "first_order": pick(self.first_order).sum().item(),
                "curvature": pick(self.curvature).sum().item()}


def decompose(ell_tokens: torch.Tensor, ell_constant: torch.Tensor, d1_constant: torch.Tensor,
              beta_tokens: torch.Tensor, beta_constant: float | torch.Tensor) -> Decomposition:
    """Split ``l_t(beta_t) - l_t(b)`` into ``l'_t(b) * (beta_t - b)`` and the exact remainder.

    ``ell_tokens`` = l_t(beta_t); ``ell_constant``, ``d1_constant`` = l_t(b), l'_t(b). The
    remainder is <= 0 token by token because each l_t is concave (up to rounding)."""
    delta = ell_tokens.double() - ell_constant.double()
    first = d1_constant.double() * (beta_tokens.double() - torch.as_tensor(beta_constant, dtype=torch.float64))
    return Decomposition(delta, first, delta - first)


def best_constant_beta(
    derivatives: Callable[[float], tuple[float, float]], low: float = 1e-2, high: float = 1e2, tolerance: float = 1e-9, max_steps: int = 200,
) -> tuple[float, str]:
    """The constant beta in ``[low, high]`` that maximises a concave sum of l_t(beta) (or any
    concave function of one positive variable, such as sum_t l_t(c * beta_t) in c).

    ``derivatives(beta)`` returns (sum of l'_t, sum of l''_t). Safeguarded Newton inside a bracket
    on the sign of the (decreasing) first derivative, bisecting in log(beta) when a Newton step
    leaves it. Returns (beta, where): ``where`` is ``"interior"``, or ``"at_high"`` / ``"at_low"``
    when the sum still rises at the bound (e.g. every observed token is the argmax: beta -> inf).
    """
    g_high, _ = derivatives(high)
    if g_high >= 0:
        return high, "at_high"
    g_low, _ = derivatives(low)
    if g_low <= 0:
        return low, "at_low"
    lo, hi = low, high
    beta = 1.0 if low < 1.0 < high else math.sqrt(low * high)
    for _ in range(max_steps):
        g, h = derivatives(beta)
        if g == 0:
            break
        lo, hi = (beta, hi) if g > 0 else (lo, beta)
        newton = beta - g / h if h < 0 else math.nan
        following = newton if lo < newton < hi else math.sqrt(lo * hi)
        done = abs(following - beta) <= tolerance * beta or hi - lo <= tolerance * beta
        beta = following
        if done:
            break
    return beta, "interior"


def best_shrinkage(
    evaluate: Callable[[torch.Tensor], LikelihoodTerms], beta_tokens: torch.Tensor, start: float = 1.0, tolerance: float = 1e-10, max_steps: int = 100,
) -> tuple[float, float]:
    """``(b, lam)`` maximising ``sum_t l_t(b + lam * d_t)``, ``d_t = beta_t - mean(beta_t)``: the
    heads' variation shrunk (``lam`` < 1) or stretched around the best level ``b``; ``lam = 0`` is
    the best constant. Concave in (b, lam) (l_t is concave and the argument linear), so damped
    Newton steps that keep every ``b + lam * d_t`` positive converge.

    ``evaluate(betas [n])`` returns :class:`LikelihoodTerms` of the n tokens at those betas."""
    d = beta_tokens.double() - beta_tokens.double().mean()
    b, lam = start, 0.0
    terms = evaluate(torch.full_like(d, b))
    value = terms.ell.sum().item()
    for _ in range(max_steps):
        g = torch.stack([terms.d1.sum(), (terms.d1 * d).sum()])
        h = torch.stack([torch.stack([terms.d2.sum(), (terms.d2 * d).sum()]), torch.stack([(terms.d2 * d).sum(), (terms.d2 * d * d).sum()])])
        try:
            step = -torch.linalg.solve(h, g)
        except RuntimeError:  # singular: no variation to fit (d = 0) or flat rows
            step = torch.stack([-g[0] / h[0, 0] if h[0, 0] < 0 else g[0], torch.zeros((), dtype=torch.float64)])
        if not bool(torch.isfinite(step).all()) or float(g @ step) <= tolerance * max(1.0, abs(value)):
            break
        size = 1.0
        while size > 1e-12:
            nb, nl = b + size * step[0].item(), lam + size * step[1].item()
            betas = nb + nl * d
            if bool((betas > 0).all()):
                trial = evaluate(betas)
                if trial.ell.sum().item() >= value:
                    break
            size /= 2
        else:
            break
        b, lam, terms, value = nb, nl, trial, trial.ell.sum().item()
    return b, lam


def compress_logits(logits: torch.Tensor, top_k: int = 256, bin_width: float = 1 / 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A weighted stand-in for each row of ``logits [N, V]``: its ``top_k`` largest logits exactly
    (weight 1), the others grouped into bins ``bin_width`` wide (counted from the row's smallest
    logit), each bin one entry at the mean of its logits with weight = their count. Returns
    ``(values [N, A], log_weights [N, A])`` in float64 (a bin empty in a row: log weight -inf),
    for :func:`likelihood_terms`.

    l(beta) on it is off by about ``beta^2 * Var_bin / 2`` times the binned share of the softmax
    mass at most (the top entries are exact), so the error vanishes where q is peaked. The binning
    runs in the logits' dtype (float32 for float32 logits: bins accumulate offsets within the bin,
    so their means keep about 1e-5 of a bin's width)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    k = min(top_k, z.shape[-1])
    top_values, top_ids = z.topk(k, dim=-1)
    top_values = top_values.double()
    if k == z.shape[-1]:
        return top_values, torch.zeros_like(top_values)
    low = z.min(dim=-1, keepdim=True).values
    scaled = (z - low) / bin_width  # >= 0
    index = scaled.long()  # floor
    fraction = scaled - index
    bins = int(index.max().item()) + 2  # the last one collects the exact top entries, then is dropped
    index.scatter_(-1, top_ids, bins - 1)
    counts = torch.zeros((z.shape[0], bins), dtype=z.dtype, device=z.device).scatter_add_(-1, index, torch.ones_like(z))[:, :-1]
    offsets = torch.zeros((z.shape[0], bins), dtype=z.dtype, device=z.device).scatter_add_(-1, index, fraction)[:, :-1]
    keep = (counts > 0).any(dim=0)  # drop bins empty in every row
    counts, offsets = counts[:, keep].double(), offsets[:, keep].double()
    left = torch.arange(bins - 1, device=z.device)[keep].double()
    used = counts > 0
    values = torch.where(used, low.double() + bin_width * (left + offsets / counts.clamp(min=1)), 0.0)
    log_weights = torch.where(used, counts.log(), -math.inf)
    return torch.cat([top_values, values], dim=-1), torch.cat([torch.zeros_like(top_values), log_weights], dim=-1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors (nan when either is constant or has < 2 entries)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(x.square().sum().item() * y.square().sum().item())
    return (x * y).sum().item() / denominator if denominator > 0 else math.nan


__all__ = ["Decomposition", "LikelihoodTerms", "best_constant_beta", "best_shrinkage", "compress_logits", "decompose", "likelihood_terms", "pearson"]
