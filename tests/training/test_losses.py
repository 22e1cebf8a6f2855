"""The AutoDeco losses against hand-worked examples, and the sort-free top-p loss against the reference."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from autodeco.heads import AutoDecoHeads
from autodeco.training.losses import (
    dft_weights,
    easy_token_keep,
    scaled_logsumexp,
    soft_top_p_gradient_in_p,
    soft_top_p_loss,
    soft_top_p_loss_reference,
    target_cumulative_mass,
    temperature_loss,
)

PROBS = [0.5, 0.25, 0.15, 0.07, 0.03]  # vocab of 5, already sorted


def _logits():
    return torch.tensor([[math.log(p) for p in PROBS]])


def test_temperature_loss_hand_worked():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0]])
    # T = 0.5: l / T = [4, 2, 0, -2, -4]; CE(y=1) = log(sum exp) - 2
    expected = math.log(sum(math.exp(v) for v in (4, 2, 0, -2, -4))) - 2
    got = temperature_loss(logits, torch.tensor([0.5]), torch.tensor([1]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # T below 0.01 is clamped to 0.01 (the released guard): l / 0.01, y = 0 is the argmax
    tiny = temperature_loss(logits, torch.tensor([1e-4]), torch.tensor([1]))
    assert tiny.item() == pytest.approx(100.0, rel=1e-4)  # log(sum exp(100 l)) - 100 ~ 200 - 100


@pytest.mark.parametrize("target", [0, 1, 4])
def test_soft_top_p_loss_hand_worked(target):
    # T = 1, P = 0.6: c = [.5, .75, .9, .97, 1]; m = exp(-30 relu(c - .6)) = [1, e^-4.5, e^-9, e^-11.1, e^-12]
    masks = [1.0, math.exp(-4.5), math.exp(-9.0), math.exp(-11.1), math.exp(-12.0)]
    z = sum(p * m for p, m in zip(PROBS, masks))
    expected = -math.log(PROBS[target] * masks[target] / (z + 1e-9) + 1e-9)
    args = (_logits(), torch.tensor([1.0]), torch.tensor([0.6]), torch.tensor([target]))
    assert soft_top_p_loss_reference(*args).item() == pytest.approx(expected, rel=1e-5)
    assert soft_top_p_loss(*args, head_size=2).item() == pytest.approx(expected, rel=1e-4)


def test_dft_weight_and_easy_token_masking():
    logits = _logits().repeat(3, 1)
    targets = torch.tensor([0, 0, 3])
    assert dft_weights(logits, targets).tolist() == pytest.approx([0.5, 0.5, 0.07], rel=1e-6)
    # rows 0 and 1 are easy (argmax == y); only draws below 0.6 drop them; row 2 is never dropped
    keep = easy_token_keep(logits, targets, 0.6, torch.tensor([0.59, 0.61, 0.0]))
    assert keep.tolist() == [False, True, True]


def test_scaled_logsumexp_gradient_is_exact():
    torch.manual_seed(0)
    logits = torch.randn(4, 50, dtype=torch.float64) * 3
    temperature = torch.rand(4, dtype=torch.float64).add(0.2).requires_grad_()
    where = logits > 0
    for mask in (None, where):
        grad = torch.autograd.grad(scaled_logsumexp(logits, temperature, mask).sum(), temperature)[0]
        reference = logits / temperature.unsqueeze(-1)
        reference = reference if mask is None else reference.masked_fill(~mask, -math.inf)
        expected = torch.autograd.grad(reference.logsumexp(-1).sum(), temperature)[0]
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


ROW_SEEDS = {"normal": 0, "peaked": 1, "flat": 2, "ties": 3}


def _rows(kind: str, vocab: int, rows: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(ROW_SEEDS[kind])  # fixed: hash() of a str changes per process
    base = torch.randn(rows, vocab, generator=generator)
    if kind == "peaked":
        return base * 6
    if kind == "flat":
        return base * 0.05
    if kind == "ties":  # tokens 1-3 tied at the nucleus boundary; the others distinct
        logits = base * 0.1 - 2.0
        logits[:, 0], logits[:, 1:4] = 5.0, 4.0
        return logits
    return base


TEMPERATURES = [0.02, 0.5, 1.0, 1.9, 1.0, 0.7]
TOP_PS = [0.5, 0.999, 0.001, 0.9, 0.3, 1.0 - 1e-6]


def _assert_fast_matches_reference(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Value and gradients in T and P within 1e-3; row i takes TEMPERATURES[i % 6] and TOP_PS[i % 6].

    The reference runs in float64: its float32 softmax over 262,144 flat tokens at T = 0.02 rounds
    enough to move the P-gradient by 4e-3 (the fast loss, in float32, is within 1e-5 there).
    """
    rows = logits.shape[0]
    temperature = torch.tensor(TEMPERATURES).repeat(rows // 6 + 1)[:rows].requires_grad_()
    top_p = torch.tensor(TOP_PS).repeat(rows // 6 + 1)[:rows].requires_grad_()
    reference = soft_top_p_loss_reference(logits.double(), temperature.double(), top_p.double(), targets)
    fast = soft_top_p_loss(logits, temperature, top_p, targets)
    grads_reference = torch.autograd.grad(reference.sum(), (temperature, top_p))
    grads_fast = torch.autograd.grad(fast.sum(), (temperature, top_p))
    torch.testing.assert_close(fast, reference.float(), rtol=2e-4, atol=2e-4)
    for got, expected in zip(grads_fast, grads_reference):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "ties"])
@pytest.mark.parametrize("vocab", [7, 1000, 262_144])
def test_fast_soft_top_p_matches_reference(kind, vocab):
    logits = _rows(kind, vocab)
    targets = torch.cat([logits[:3].argmax(-1), torch.randint(0, vocab, (3,), generator=torch.Generator().manual_seed(1))])
    if kind == "ties":  # targets outside the tie: their cumulative mass is well defined
        targets = torch.tensor([0, 0, 4, 5, vocab - 1, 6]) % vocab
    _assert_fast_matches_reference(logits, targets)


def test_fast_soft_top_p_matches_reference_on_many_flat_rows():
    """200 draws of the [1000-flat] case at once. On its T = 0.02 row, whose target is the argmax (a
    small gradient, so an error shows), the T-gradient was past 1e-3 in 2 of these draws until its
    own bound joined the widening test."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200 * 6, 1000, generator=generator) * 0.05
    argmax_rows = torch.arange(200 * 6) % 6 < 3  # as in the test above: argmax targets, then random ones
    targets = torch.where(argmax_rows, logits.argmax(-1), torch.randint(0, 1000, (200 * 6,), generator=generator))
    _assert_fast_matches_reference(logits, targets)


@settings(max_examples=60, deadline=None)
@given(
    scale=st.floats(0.01, 20.0), temperature=st.floats(0.02, 2.0), top_p=st.floats(0.001, 0.999),
    head_size=st.integers(1, 40), seed=st.integers(0, 10_000),
)
@example(scale=0.07, temperature=0.02, top_p=0.1, head_size=4, seed=7)  # flat, small T: T-gradient 4x past without its bound
def test_tail_bound_holds(scale, temperature, top_p, head_size, seed):
    """Whatever the head size, the fast loss and its gradients in P and T stay within the stated
    tolerance of the reference (rows where the bounds are loose take a wider head, up to exact)."""
    tolerance = 1e-3
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 300, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(0, 300, (3,), generator=generator)
    targets[0] = logits[0].argmax()  # its loss has a small gradient, so an error in it shows
    t_ref, t_fast = (torch.full((3,), temperature, dtype=torch.float64, requires_grad=True) for _ in range(2))
    p_ref, p_fast = (torch.full((3,), top_p, dtype=torch.float64, requires_grad=True) for _ in range(2))
    reference = soft_top_p_loss_reference(logits, t_ref, p_ref, targets)
    fast = soft_top_p_loss(logits, t_fast, p_fast, targets, head_size=head_size, tolerance=tolerance)
    # a relative error e in the normaliser Z moves log Z, the loss, by at most ~e (float32 inside: + 1e-5)
    assert (fast - reference).abs().max().item() <= tolerance + 1e-5
    grads_ref = torch.autograd.grad(reference.sum(), (t_ref, p_ref))
    grads_fast = torch.autograd.grad(fast.sum(), (t_fast, p_fast))
    for got, expected in zip(grads_fast, grads_ref):
        assert ((got - expected).abs() <= 2 * tolerance * (1 + expected.abs()) + 1e-4).all()


def test_soft_top_p_gradient_reaches_both_heads():
    torch.manual_seed(0)
    heads = AutoDecoHeads(16)
    hidden, logits = torch.randn(8, 16), torch.randn(8, 40) * 3
    temperature, top_p = heads(hidden, logits)
    soft_top_p_loss(logits, temperature, top_p, torch.randint(0, 40, (8,))).sum().backward()
    for head in (heads.temp_head, heads.top_p_head):
        assert head.mlp[0].weight.grad is not None and head.mlp[0].weight.grad.abs().sum() > 0


def test_target_cumulative_mass_hand_worked():
    # PROBS sorted: c = [.5, .75, .9, .97, 1]; at T = 0.5 p ∝ PROBS^2 = [.25, .0625, .0225, .0049, .0009] / .3408
    logits = _logits().repeat(2, 1)
    got = target_cumulative_mass(logits, torch.tensor([1.0, 0.5]), torch.tensor([2, 1]))
    assert got.tolist() == pytest.approx([0.9, (0.25 + 0.0625) / 0.3408], rel=1e-5)


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95, 0.999])
def test_soft_top_p_gradient_in_p_is_alpha_times_trimmed_share_minus_cut(top_p):
    """dL/dP = alpha * (A - [c_y > P]) (see soft_top_p_gradient_in_p) against autograd of the reference."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(16, 60, generator=generator, dtype=torch.float64) * 2
    temperature = torch.rand(16, generator=generator, dtype=torch.float64) + 0.4
    targets = torch.cat([logits[:8].argmax(-1), torch.randint(0, 60, (8,), generator=generator)])
    p = torch.full((16,), top_p, dtype=torch.float64, requires_grad=True)
    loss = soft_top_p_loss_reference(logits, temperature, p, targets)
    expected = torch.autograd.grad(loss.sum(), p)[0]
    torch.testing.assert_close(soft_top_p_gradient_in_p(logits, temperature, p.detach(), targets), expected, rtol=1e-4, atol=1e-4)


def test_soft_top_p_loss_never_rewards_truncating_the_targets_own_distribution():
    """Targets drawn from p = softmax(l / T) itself: the expected dL/dP, sum_y p_y dL/dP(y), is <= 0
    at every P (P = 1 is optimal), although each in-nucleus target alone pushes P down."""
    generator = torch.Generator().manual_seed(6)
    vocab = 40
    logits = torch.randn(5, vocab, generator=generator, dtype=torch.float64) * 2.5
    temperature = torch.tensor([0.3, 0.6, 1.0, 1.0, 1.5], dtype=torch.float64)
    probs = torch.softmax(logits / temperature.unsqueeze(-1), -1)
    rows = torch.arange(5).repeat_interleave(vocab)
    targets = torch.arange(vocab).repeat(5)
    for top_p in (0.2, 0.5, 0.8, 0.9, 0.99, 0.999):
        gradient = soft_top_p_gradient_in_p(logits[rows], temperature[rows], torch.full((5 * vocab,), top_p, dtype=torch.float64), targets)
        expected = (probs.flatten() * gradient).view(5, vocab).sum(-1)
        assert (expected <= 1e-9).all(), (top_p, expected)
        inside = target_cumulative_mass(logits[rows], temperature[rows], targets).double() <= top_p - 1e-6
        assert (gradient[inside] >= 0).all() and (gradient[~inside] < 0).all()
