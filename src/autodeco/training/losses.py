"""The AutoDeco training losses (spec section 4), as pure functions of one token row each.

Every function takes, per position, the base model's unscaled ``logits [N, V]`` (no gradient: the
base is frozen), the heads' ``temperature [N]`` and ``top_p [N]``, and the ground-truth next
tokens ``targets [N]``, and returns a per-position tensor ``[N]``. Reductions (means over the kept
positions of a batch) belong to the trainer.

Two implementations of the soft top-p loss sit side by side: :func:`soft_top_p_loss_reference`,
the released code's formula read literally (a full sort of the vocabulary), and
:func:`soft_top_p_loss`, which gives the same value and gradient without the sort (see its
docstring for the bound). :func:`autodeco_losses` computes both losses at once, sharing their
vocabulary-sized work; the trainer calls it. The vocabulary-sized work of both fast losses runs without autograd;
:class:`ScaledLogSumExp` supplies the exact gradient with respect to T in closed form, so no
``[N, V]`` tensor is kept for the backward pass.

Why the soft top-p loss drives P to 1 on self-generated data: see
:func:`soft_top_p_gradient_in_p` and ``benchmarks/results/evidence-gemma-3-270m/top-p-saturation/README.md``.
"""

from __future__ import annotations

import math

import torch

MIN_TEMPERATURE = 1e-2  # the released temperature loss clamps T here
TOP_P_TEMPERATURE_EPS = 1e-8  # the released soft top-p loss clamps T here instead
RENORM_EPS = 1e-9  # released: p~ = p*m / (sum(p*m) + 1e-9); loss = -log(p~[y] + 1e-9)
DEFAULT_ALPHA = 30.0
DEFAULT_EASY_TOKEN_DROP = 0.6


class ScaledLogSumExp(torch.autograd.Function):
    """``(logsumexp(logits / T), E_q[logits])`` over the last dim, the first differentiable in T only.

    d/dT logsumexp(l / T) = -E_q[l] / T^2 with q = softmax(l / T), so the backward pass needs one
    number per row, computed in the forward pass, instead of the ``[N, V]`` softmax autograd
    would keep; that number, the mean logit, is the second output (no gradient). ``where``
    (optional, bool ``[N, V]``) restricts both to those entries.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, temperature: torch.Tensor, where: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = logits.float() / temperature.float().unsqueeze(-1)
        if where is not None:
            scaled.masked_fill_(~where, -math.inf)
        row_max = scaled.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).min)  # all -inf rows
        weights = scaled.sub_(row_max).exp_()  # in place: one [N, V] buffer in all
        total = weights.sum(dim=-1)
        clean_logits = logits.float() if where is None else logits.float().masked_fill(~where, 0.0)
        expected_logit = torch.linalg.vecdot(weights, clean_logits) / total.clamp_min(torch.finfo(torch.float32).tiny)
        ctx.save_for_backward(temperature, expected_logit)
        ctx.mark_non_differentiable(expected_logit)
        return row_max.squeeze(-1) + total.log(), expected_logit

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, _grad_expected: torch.Tensor | None):
        temperature, expected_logit = ctx.saved_tensors
        grad_temperature = grad_output * (-expected_logit / temperature.float().square())
        return None, grad_temperature.to(temperature.dtype), None


def scaled_logsumexp(logits: torch.Tensor, temperature: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]``: log sum_i exp(logits_i / T) (over ``where`` only, if given); exact gradient in T."""
    return ScaledLogSumExp.apply(logits, temperature, where)[0]


@torch.no_grad()
def dft_weights(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dynamic Fine-Tuning weight ``softmax(l)[y]``: the base's own probability of the target, detached."""
    logits = logits.float()
    return (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)).exp()


@torch.no_grad()
def easy_token_keep(logits: torch.Tensor, targets: torch.Tensor, drop_probability: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Easy-token masking: bool ``[N]``, False where ``argmax(l) == y`` and ``uniforms < drop_probability``.

    ``uniforms [N]`` in [0, 1) are the caller's, so a position's draw can depend on the example
    and position alone (the same whatever the batching or the number of processes).
    """
    easy = logits.argmax(dim=-1) == targets
    return ~(easy & (uniforms < drop_probability))


def _shift_to_max(logits: torch.Tensor) -> torch.Tensor:
    """``l - max(l)`` per row, in float32: the losses are unchanged, and their T-gradients, sums of
    terms in l / T^2, no longer cancel large numbers (T = 0.02, l ~ 20 would lose 3 digits)."""
    logits = logits.float()
    return logits - logits.amax(dim=-1, keepdim=True)


def temperature_loss(logits: torch.Tensor, temperature: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per position ``CE(l / max(T, 0.01), y) = logsumexp(l / T') - l_y / T'`` with ``T' = max(T, 0.01)``."""
    return autodeco_losses(logits, temperature, None, targets, with_top_p=False)[0]


def soft_top_p_loss_reference(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, targets: torch.Tensor, alpha: float = DEFAULT_ALPHA
) -> torch.Tensor:
    """The soft top-p loss as released (readable reference; sorts the whole vocabulary).

    p = softmax(l / T); sort p descending, c = cumsum; m = exp(-alpha * relu(c - P)) mapped back
    to vocabulary order; p~ = p * m / (sum(p * m) + 1e-9); loss = -log(p~[y] + 1e-9). Gradients
    reach P (top-p head) and T (temperature head, through p).
    """
    probs = torch.softmax(logits.float() / temperature.clamp_min(TOP_P_TEMPERATURE_EPS).unsqueeze(-1), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    decay = torch.exp(-alpha * torch.relu(sorted_probs.cumsum(dim=-1) - top_p.unsqueeze(-1)))
    mask = torch.zeros_like(probs).scatter(-1, order, decay)
    masked = probs * mask
    renormalised = masked / (masked.sum(dim=-1, keepdim=True) + RENORM_EPS)
    return -torch.log(renormalised.gather(-1, targets.unsqueeze(-1)).squeeze(-1) + RENORM_EPS)


@torch.no_grad()
def target_cumulative_mass(logits: torch.Tensor, temperature: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]``: c_y, the probability mass of the target and of every token ranked above it under
    p = softmax(l / T) (T detached, clamped as in the soft top-p loss): the smallest top-p whose
    soft mask leaves the target whole (m_y = 1 iff c_y <= P). Tokens tied with y count as above
    it. (The hard nucleus keeps y already for P > c_y - p_y.)"""
    shifted = _shift_to_max(logits)
    temperature = temperature.detach().float().clamp_min(TOP_P_TEMPERATURE_EPS)
    return _target_mass(shifted, temperature, targets, scaled_logsumexp(shifted, temperature))


def _target_mass(shifted: torch.Tensor, temperature: torch.Tensor, targets: torch.Tensor, log_norm: torch.Tensor) -> torch.Tensor:
    """:func:`target_cumulative_mass` of logits shifted to max 0, given their log-normaliser."""
    target_logit = shifted.gather(-1, targets.unsqueeze(-1))
    return torch.exp(scaled_logsumexp(shifted, temperature, where=shifted >= target_logit) - log_norm).clamp_max(1.0)


def soft_top_p_gradient_in_p(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, targets: torch.Tensor, alpha: float = DEFAULT_ALPHA
) -> torch.Tensor:
    """``[N]``: dL/dP of :func:`soft_top_p_loss_reference`, in closed form (no autograd).

    With m_i = exp(-alpha * relu(c_i - P)) and Z = sum_i p_i m_i, L = -log p_y - log m_y + log Z,
    so (before the 1e-9 guards)

        dL/dP = alpha * (A - [c_y > P]),   A = sum_{i: c_i > P} p_i m_i / Z,

    A being the share of the softly kept mass that lies past P. A target inside the soft nucleus
    (c_y <= P) gives alpha * A >= 0: a smaller P helps it, by as much as the mask already trims.
    The tokens past P hold at most 1 - P + p_j (p_j: the token straddling P), so near P = 1,
    past all but a tail of small tokens, that push vanishes. A target past P gives
    -alpha * (1 - A), about -alpha: a strong push up. Over targets drawn from p itself,
    Pr(c_y > P) = sum_{i: c_i > P} p_i >= A, so the expected gradient is never positive and P = 1
    is the optimum: the loss is a log-likelihood, and truncating the distribution the targets
    come from only loses.
    The guards multiply this by r / (r + 1e-9), r = p_y m_y / (Z + 1e-9), and Z by Z / (Z + 1e-9):
    a target cut so deeply that r ~ 1e-9 gets no gradient at all.
    """
    probs = torch.softmax(logits.double() / temperature.double().clamp_min(TOP_P_TEMPERATURE_EPS).unsqueeze(-1), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    top_p = top_p.double().unsqueeze(-1)
    kept = sorted_probs * _decay(cumulative, top_p, alpha)
    normaliser = kept.sum(dim=-1) + RENORM_EPS
    tail_share = (kept * (cumulative > top_p)).sum(dim=-1) / normaliser
    target_rank = (order == targets.unsqueeze(-1)).double().argmax(dim=-1, keepdim=True)
    target_cut = cumulative.gather(-1, target_rank).squeeze(-1) > top_p.squeeze(-1)
    ratio = kept.gather(-1, target_rank).squeeze(-1) / normaliser
    return alpha * (tail_share - target_cut.double()) * ratio / (ratio + RENORM_EPS)


def _decay(cumulative: torch.Tensor, top_p: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.exp(-alpha * torch.relu(cumulative - top_p))


def _tail_integral(head_mass: torch.Tensor, top_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """∫ from S to 1 of exp(-alpha * relu(c - P)) dc, for S = head_mass: the tail's mass-weighted mask."""
    # f = 1 on [S, max(S, P)], exp decay after, and f(max(S, P)) = f(S). Not written with max(S, P):
    # float32 autograd would sum its two S-paths as (1 - f(S)) - 1 and lose f(S)'s digits.
    return torch.relu(top_p - head_mass) + (_decay(head_mass, top_p, alpha) - _decay(torch.ones_like(top_p), top_p, alpha)) / alpha


def soft_top_p_loss(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    head_size: int = 64,
    tolerance: float = 1e-3,
) -> torch.Tensor:
    """:func:`soft_top_p_loss_reference` without sorting the vocabulary: the loss and its gradients
    in P and in T each within about ``tolerance`` of the reference's, absolutely.

    Only the normaliser Z = sum_i p_i m_i needs the sorted order of every token. Take the
    ``head_size`` most probable tokens exactly (top-k + cumsum). The tail tokens, in sorted order,
    cover cumulative mass from S (the head's mass) to 1 and each has m_i = f(c_i) with f
    decreasing, so their sum sum_i p_i f(c_i) is a Riemann sum of I = ∫_S^1 f(c) dc with steps
    p_i <= p_k (the k-th head probability). It lies in [I - delta, I] with
    delta = p_k * (f(S) - f(1)); we use I - delta / 2 (off by at most delta / 2). Its gradients are
    the integral's, off by at most:

    - in P, s = p_k * alpha * ([S < P] + f(S) - f(1)): d/dP of the tail sum is the same Riemann
      sum of alpha * f(c) * [c > P], and s bounds the variation of that integrand over [S, 1];
    - in T, where every tail p_i and c_i moves (dp_i/dT = -p_i (l_i - E[l]) / T^2 and
      dc_i/dT = -G_i / T^2, with 0 <= G_i = sum_{j<=i} p_j (l_j - E[l]) <= G, for
      G = sum_{j<=k} p_j (l_j - E[l])^+ + (1 - S) * (l_k - E[l])^+, known from the head and E[l],
      which the log-normaliser's pass yields), differentiating the Riemann error interval by
      interval: (G / T^2) * s as the intervals' ends move, plus
      alpha * p_k * f(S) * (G + (1 - max(S, P) + p_k) * (l_k - E[l])^+) / T^2 as their widths do.

    The value error delta / 2 also moves the gradients of log Z, by its relative size times
    |d log Z/dP| <= alpha and |d log Z/dT| <= (G / T^2) * max((f(c_1) - f(1)) / Z, alpha).
    Divided by Z + 1e-9 (the loss's own), these bound the loss's errors. A row where any exceeds
    ``tolerance`` is redone with a 64x larger head (top-k of 4096 costs a fraction of a sort), up
    to the whole vocabulary, where the tail is empty and the result exact. The bounds are small
    for peaked rows (f(S) ~ 0) and for flat ones (p_k ~ 1/V); the T bound is typically a few
    times the P bound (G / T^2 ~ 1 at T ~ 1). They hold to first order in ``tolerance``, before
    float32 rounding, which grows with the T-gradient's terms (~1 / T^2): over 1,000 draws of six
    flat rows (logits ~ N(0, 0.05^2), V = 1000, T from 0.02 to 1.9), the T-gradient stayed within
    3e-4 * (1 + |gradient|) of a float64 reference.

    The target's own mask needs only its cumulative mass, c_y = sum_{j: l_j > l_y} p_j + p_y: one
    masked log-sum-exp, no sort. (Tokens tied with y count after it; the reference orders ties
    arbitrarily.)
    """
    return autodeco_losses(logits, temperature, top_p, targets, alpha=alpha, with_temperature=False, head_size=head_size, tolerance=tolerance)[1]


def autodeco_losses(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    with_temperature: bool = True,
    with_top_p: bool = True,
    head_size: int = 64,
    tolerance: float = 1e-3,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both per-position losses (:func:`temperature_loss`, :func:`soft_top_p_loss`), or either,
    sharing their vocabulary-sized work: one shift of the logits and one log-normaliser
    logsumexp(l / T). The two losses clamp T differently (0.01 and 1e-8), which only matters on
    rows with T < 0.01; those get their own log-normaliser.
    """
    shifted = _shift_to_max(logits)
    top_p_temperature = temperature.clamp_min(TOP_P_TEMPERATURE_EPS)
    log_norm, mean_logit = ScaledLogSumExp.apply(shifted, top_p_temperature)
    temperature_losses = top_p_losses = None
    if with_temperature:
        clamped = temperature.clamp_min(MIN_TEMPERATURE)
        low = (temperature < MIN_TEMPERATURE).nonzero().squeeze(-1)
        clamped_norm = log_norm.index_put((low,), scaled_logsumexp(shifted[low], clamped[low])) if low.numel() else log_norm
        temperature_losses = clamped_norm - shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1) / clamped
    if with_top_p:
        top_p_losses = _soft_top_p(shifted, top_p_temperature, top_p, targets, log_norm, mean_logit, alpha, head_size, tolerance)
    return temperature_losses, top_p_losses


def _soft_top_p(
    shifted: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    targets: torch.Tensor,
    log_norm: torch.Tensor,
    mean_logit: torch.Tensor,
    alpha: float,
    head_size: int,
    tolerance: float,
) -> torch.Tensor:
    """:func:`soft_top_p_loss` on logits shifted to max 0, given their log-normaliser and mean logit E_p[l]."""
    vocab = shifted.shape[-1]
    k = min(head_size, vocab)
    with torch.no_grad():
        head_logits, head_ids = shifted.topk(k, dim=-1)  # sorted descending, the same order as p
    head_probs = torch.exp(head_logits / temperature.unsqueeze(-1) - log_norm.unsqueeze(-1))
    head_cumulative = head_probs.cumsum(dim=-1)
    head_masks = _decay(head_cumulative, top_p.unsqueeze(-1), alpha)
    head_mass = head_cumulative[:, -1].clamp_max(1.0)
    with torch.no_grad():
        last_prob, tail_mask, end_mask = head_probs[:, -1], _decay(head_mass, top_p, alpha), _decay(torch.ones_like(top_p), top_p, alpha)
        value_bound = last_prob * (tail_mask - end_mask) / 2
    normaliser = (head_probs * head_masks).sum(dim=-1) + _tail_integral(head_mass, top_p, alpha) - value_bound

    hit = head_ids == targets.unsqueeze(-1)
    in_head = hit.any(dim=-1)
    target_prob = (head_probs * hit).sum(dim=-1)
    target_mask = (head_masks * hit).sum(dim=-1)
    outside = (~in_head).nonzero().squeeze(-1)
    if outside.numel():
        sub_logits, sub_t, sub_targets = shifted[outside], temperature[outside], targets[outside]
        target_logit = sub_logits.gather(-1, sub_targets.unsqueeze(-1))
        p_y = torch.exp(target_logit.squeeze(-1) / sub_t - log_norm[outside])
        above = torch.exp(scaled_logsumexp(sub_logits, sub_t, where=sub_logits > target_logit) - log_norm[outside])
        target_prob = target_prob.index_put((outside,), p_y)
        target_mask = target_mask.index_put((outside,), _decay(above + p_y, top_p[outside], alpha))
    loss = -torch.log(target_prob * target_mask / (normaliser + RENORM_EPS) + RENORM_EPS)

    with torch.no_grad():  # soft_top_p_loss's bounds on the errors in Z, dZ/dP and dZ/dT
        z = normaliser + RENORM_EPS  # the loss divides by this, so its errors scale with 1 / z (and z > 0)
        slope_bound = alpha * last_prob * ((head_mass < top_p).float() + tail_mask - end_mask)
        excess = (head_logits - mean_logit.unsqueeze(-1)).clamp_min(0) / temperature.square().unsqueeze(-1)
        drift = (head_probs * excess).sum(dim=-1) + (1 - head_mass) * excess[:, -1]  # G / T^2 >= |dc_i/dT|
        past_top_p = 1 - torch.maximum(head_mass, top_p) + last_prob  # >= the mass of tail tokens with c_i > P
        log_norm_slope = drift * torch.maximum((head_masks[:, 0] - end_mask) / z, torch.full_like(z, alpha))  # >= |d log Z/dT|
        temperature_bound = (
            drift * slope_bound
            + alpha * last_prob * tail_mask * (drift + past_top_p * excess[:, -1])
            + value_bound * log_norm_slope
        )
        worst = torch.maximum(torch.maximum(value_bound, slope_bound + alpha * value_bound), temperature_bound)
    unsure = (worst > tolerance * z).nonzero().squeeze(-1)
    if unsure.numel() and k < vocab:  # with k = V the tail is empty and the bounds are 0
        wider = _soft_top_p(
            shifted[unsure], temperature[unsure], top_p[unsure], targets[unsure], log_norm[unsure], mean_logit[unsure],
            alpha, head_size * 64, tolerance,
        )
        loss = loss.index_put((unsure,), wider)
    return loss
