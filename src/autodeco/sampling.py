"""Sampling math: pure, batched tensor functions with per-row parameters. No model, no I/O.

Order of operations, written down once (Hugging Face's warper order):

    probs = softmax(logits / T)          T below GREEDY_BELOW means greedy (argmax)
    keep the top-k tokens                (k = 0: off)
    keep the smallest nucleus reaching top_p of the mass left (top_p >= 1: off)
    keep tokens with p >= min_p * p_max  (min_p = 0: off)
    renormalise, sample

AutoDeco supplies a per-row T and top_p from its heads; static strategies supply constants; the
entropy-based baseline (dynatemp) derives T from each step's logits. All go through the same
functions, so a batch can mix them. Tokens tied in probability with the last token
of a top-k or top-p cut are all kept: the result then does not depend on how a sort orders ties.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

import torch

from autodeco.errors import AutoDecoError

DECODING_MODES = ("autodeco", "static", "greedy", "dynatemp")
NEUTRAL_CONTROLS = (1.0, 1.0, 0.0, math.inf, 0.0, 1.0)  # temperature/top-p scales, then t_min, t_max, p_min, p_max
# Temperatures below this sample greedily. softmax(l / T) is already a point mass on the argmax
# there (two float32 logits that differ at all differ by far more than T * 100), while l / T
# overflows float32 for |l| > 3.4e38 * T: a valid request such as T = 1e-37 must not yield NaN.
GREEDY_BELOW = 1e-30


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes.

    ``decoding="autodeco"`` (default) uses the learned T and P per token, modified by the user
    controls of the released serving code: ``T = T_learned * temperature_scale`` (0 means greedy),
    ``P = clamp(P_learned * top_p_scale, 0, 1)``, then clamped to ``[t_min, t_max]`` and
    ``[p_min, p_max]``. ``decoding="static"`` uses the constants ``temperature`` and ``top_p``
    (the usual sampler); ``decoding="greedy"`` takes the argmax. ``decoding="dynatemp"`` is the
    entropy-based baseline of llama.cpp: ``T = t_min + (t_max - t_min) * (H / log V) ** dynatemp_exponent``
    with H the entropy of softmax(logits), and the constant ``top_p``. ``top_k`` and ``min_p`` filter in
    every mode. ``seed`` makes a request reproducible whatever batch it runs in.
    """

    decoding: str = "autodeco"
    temperature_scale: float = 1.0
    top_p_scale: float = 1.0
    t_min: float = 0.0
    t_max: float = math.inf
    p_min: float = 0.0
    p_max: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    dynatemp_exponent: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        _check(self.decoding in DECODING_MODES, f"decoding={self.decoding!r} is unknown; use one of {DECODING_MODES}")
        for name in ("temperature_scale", "top_p_scale", "temperature"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"{name}={value} must be a finite number >= 0 (0 means greedy)")
        for name in ("top_p", "min_p", "p_min", "p_max"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name}={value} must lie in [0, 1]")
        _check(0.0 <= self.t_min <= self.t_max, f"temperature bounds [{self.t_min}, {self.t_max}] need 0 <= t_min <= t_max")
        _check(self.p_min <= self.p_max, f"top-p bounds [{self.p_min}, {self.p_max}] need p_min <= p_max")
        _check(math.isfinite(self.dynatemp_exponent) and self.dynatemp_exponent > 0, f"dynatemp_exponent={self.dynatemp_exponent} must be a finite number > 0")
        if self.decoding == "dynatemp":
            _check(math.isfinite(self.t_max), "decoding='dynatemp' maps entropy onto [t_min, t_max]: give a finite t_max")
            _check(self.temperature == 1.0, "decoding='dynatemp' sets the temperature from the entropy; use t_min/t_max, not temperature")
        _check(self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        _check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        _check(self.seed is None or 0 <= self.seed < 2**63, f"seed={self.seed} must lie in [0, 2**63)")
        if self.decoding == "autodeco":
            _check(
                self.temperature == 1.0 and self.top_p == 1.0,
                "temperature/top_p are the constants of decoding='static'; with decoding='autodeco' "
                "use temperature_scale/top_p_scale (multipliers on the learned values)",
            )
        else:
            _check(
                self.temperature_scale == 1.0 and self.top_p_scale == 1.0,
                f"temperature_scale/top_p_scale act on learned values; with decoding={self.decoding!r} "
                "set temperature/top_p instead, or use decoding='autodeco'",
            )

    @property
    def is_greedy(self) -> bool:
        """True when this request takes the argmax at every step."""
        if self.decoding == "autodeco":
            return self.temperature_scale == 0.0 or self.t_max == 0.0
        if self.decoding == "dynatemp":
            return self.t_max == 0.0
        return self.decoding == "greedy" or self.temperature == 0.0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AutoDecoError(message)


def apply_user_controls(
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    temperature_scale: torch.Tensor | float = 1.0,
    top_p_scale: torch.Tensor | float = 1.0,
    t_min: torch.Tensor | float = 0.0,
    t_max: torch.Tensor | float = math.inf,
    p_min: torch.Tensor | float = 0.0,
    p_max: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned (T, P) -> the values used: T*scale clamped to [t_min, t_max] (scale 0 stays 0,
    i.e. greedy), clamp(P*scale, 0, 1) clamped to [p_min, p_max]. Arguments broadcast per row."""
    scaled_t = temperature * temperature_scale
    greedy = torch.as_tensor(temperature_scale, device=scaled_t.device) == 0
    final_t = torch.where(greedy, torch.zeros_like(scaled_t), _clamp(scaled_t, t_min, t_max))
    final_p = _clamp((top_p * top_p_scale).clamp(0.0, 1.0), p_min, p_max)
    return final_t, final_p


def entropy_temperature(logits: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """Per-row dynatemp temperature ``t_min + (t_max - t_min) * (H / log V) ** exponent``, where H
    is the entropy of softmax(logits [B, V]) and log V its largest value: confident steps run cool,
    uncertain ones hot."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).nan_to_num().sum(dim=-1)  # -inf logits give 0 * -inf
    normalised = (entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)
    return t_min + (t_max - t_min) * normalised.pow(exponent)


def _clamp(values: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """Clamp to per-row (or scalar) bounds."""
    low = torch.as_tensor(low, dtype=values.dtype, device=values.device)
    high = torch.as_tensor(high, dtype=values.dtype, device=values.device)
    return torch.minimum(torch.maximum(values, low), high)


@dataclass
class BatchedSampling:
    """The per-row tensors of a batch of :class:`SamplingParams` (vLLM style: no loop over rows)."""

    uses_heads: torch.Tensor  # bool [B]: autodeco rows
    uses_entropy: torch.Tensor  # bool [B]: dynatemp rows
    dynatemp_exponent: torch.Tensor
    temperature_scale: torch.Tensor
    top_p_scale: torch.Tensor
    t_min: torch.Tensor
    t_max: torch.Tensor
    p_min: torch.Tensor
    p_max: torch.Tensor
    static_temperature: torch.Tensor  # 0 for greedy rows
    static_top_p: torch.Tensor
    top_k: torch.Tensor | None  # None when no row filters, so the common case skips the work
    min_p: torch.Tensor | None
    needs_heads: bool  # some row decodes with the learned values: the model must run its heads
    learned_as_is: bool  # every row decodes with the learned values and no user controls
    needs_entropy: bool  # some row derives T from the logits' entropy
    all_greedy: bool  # every row takes the argmax: no randomness needed

    @classmethod
    def from_params(cls, params: list[SamplingParams], device: torch.device | str = "cpu") -> "BatchedSampling":
        def column(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        top_k = [p.top_k for p in params]
        min_p = [p.min_p for p in params]
        return cls(
            uses_heads=column([p.decoding == "autodeco" for p in params], torch.bool),
            uses_entropy=column([p.decoding == "dynatemp" for p in params], torch.bool),
            dynatemp_exponent=column([p.dynatemp_exponent for p in params]),
            temperature_scale=column([p.temperature_scale for p in params]),
            top_p_scale=column([p.top_p_scale for p in params]),
            t_min=column([p.t_min for p in params]),
            t_max=column([p.t_max for p in params]),
            p_min=column([p.p_min for p in params]),
            p_max=column([p.p_max for p in params]),
            static_temperature=column([0.0 if p.is_greedy else p.temperature for p in params]),
            static_top_p=column([p.top_p for p in params]),
            top_k=column(top_k, torch.long) if any(top_k) else None,
            min_p=column(min_p) if any(min_p) else None,
            needs_heads=any(p.decoding == "autodeco" for p in params),
            learned_as_is=all(
                p.decoding == "autodeco" and (p.temperature_scale, p.top_p_scale, p.t_min, p.t_max, p.p_min, p.p_max) == NEUTRAL_CONTROLS
                for p in params
            ),
            needs_entropy=any(p.decoding == "dynatemp" and not p.is_greedy for p in params),
            all_greedy=all(p.is_greedy for p in params),
        )

    def repeat_rows(self, times: int) -> "BatchedSampling":
        """Each row ``times`` times in a row (one per position, when several are sampled per row)."""
        if times == 1:
            return self
        return replace(self, **{f.name: value.repeat_interleave(times, dim=0) for f in fields(self) if isinstance(value := getattr(self, f.name), torch.Tensor)})

    def resolve(
        self, learned_temperature: torch.Tensor | None, learned_top_p: torch.Tensor | None, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (T, P) actually used this step: learned values under user controls for
        autodeco rows, entropy-based T for dynatemp rows, the constants for static and greedy
        rows. Pass None for the learned values when the heads did not run (``needs_heads`` is
        False); ``logits [B, V]`` are needed when ``needs_entropy``."""
        temperature = self.static_temperature
        if self.needs_entropy:
            if logits is None:
                raise AutoDecoError("this batch has dynatemp rows, which need the step's logits")
            dynamic = entropy_temperature(logits, self.t_min, self.t_max, self.dynatemp_exponent)
            temperature = torch.where(self.uses_entropy, dynamic, temperature)
        if learned_temperature is None or learned_top_p is None:
            if self.needs_heads:
                raise AutoDecoError("this batch decodes with the learned T and P, but the model output carries none")
            return temperature, self.static_top_p
        if self.learned_as_is:  # what apply_user_controls would return, without its dozen small ops
            return learned_temperature.float(), learned_top_p.float()
        auto_t, auto_p = apply_user_controls(
            learned_temperature.float(), learned_top_p.float(),
            self.temperature_scale, self.top_p_scale, self.t_min, self.t_max, self.p_min, self.p_max,
        )
        return (
            torch.where(self.uses_heads, auto_t, temperature),
            torch.where(self.uses_heads, auto_p, self.static_top_p),
        )


class NonFiniteRows(AutoDecoError):
    """The sampler met NaN or infinite values in some rows; ``rows`` are their batch indices, so
    that a batch can fail those rows alone."""

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


def _non_finite_error(bad: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> NonFiniteRows:
    """The error for the ``bad [B]`` rows, naming what was not finite. Logits are blamed first:
    the heads read them, so NaN logits give a NaN T too."""
    bad_logits = bad & (torch.isnan(logits).any(dim=-1) | ~torch.isfinite(logits.amax(dim=-1)))
    bad_t = bad & ~bad_logits & torch.isnan(temperature)
    bad_p = bad & ~bad_logits & ~bad_t

    def rows(mask: torch.Tensor) -> list[int]:
        return mask.nonzero().flatten().tolist()

    causes = []
    if bool(bad_logits.any()):
        hint = ("float16 overflows easily: load the model with dtype=bfloat16 or float32" if logits.dtype == torch.float16
                else "the base model's weights, or its activations on this input, hold NaN or inf: check the checkpoint")
        causes.append(f"the model's {str(logits.dtype).removeprefix('torch.')} logits are NaN or infinite in batch rows {rows(bad_logits)} ({hint})")
    if bool(bad_t.any()):
        causes.append(f"the temperature is NaN in batch rows {rows(bad_t)} (the temperature head's weights hold NaN or inf: a corrupt or diverged checkpoint)")
    if bool(bad_p.any()):
        causes.append(f"the top-p is NaN in batch rows {rows(bad_p)} (the top-p head's weights hold NaN or inf: a corrupt or diverged checkpoint)")
    return NonFiniteRows("cannot sample: " + "; ".join(causes), rows(bad))


BLOCK = 128  # entries per block in the block-maximum searches below
CANDIDATES = 64  # the fast sampler's first list: enough for the nucleus of most steps of a trained model
LOG2_E = 1.0 / math.log(2.0)
SUBNORMAL_EXPONENT = -126.0  # 2^z below 2^-126 is a float32 subnormal: see softmax_exponents
FLUSHED_EXPONENT = -300.0  # where exp2 is fast again, and 2^z is 0
# A softmax the caller computed at T + 1e-8 (the released guard, see heads.statistics_temperature)
# serves rows sampled at T: it moves the log-ratio of two tokens g nats apart by g * 1e-8 / T.
GUARD_TOLERANCE = 2e-8


def _blocks(values: torch.Tensor) -> torch.Tensor | None:
    """``values [B, V]`` viewed as ``[B, V / BLOCK, BLOCK]``, or None when V is not a multiple."""
    vocab = values.shape[-1]
    if vocab % BLOCK or not values.is_contiguous():
        return None
    return values.view(values.shape[0], vocab // BLOCK, BLOCK)


def row_argmax(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``values.argmax(dim=-1)``: the first index of each row's maximum, that maximum) in one
    pass over the row.

    torch's CPU argmax over a bfloat16 vocabulary runs element by element (~4 ms for [8, 262144]);
    a vectorised max per block, then the argmax inside the first block holding the row's maximum,
    gives the same index at a tenth of the cost.
    """
    blocks = _blocks(values)
    if blocks is None:
        best = values.max(dim=-1)
        return best.indices, best.values
    maxima = blocks.amax(dim=-1)
    best_block = maxima.argmax(dim=-1)
    ids = best_block.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=values.device)
    return ids.gather(-1, values.gather(-1, ids).argmax(dim=-1, keepdim=True)).squeeze(-1), maxima.amax(dim=-1)


def top_candidates(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``values [B, V]`` and their ids, descending: the
    values of ``torch.topk`` exactly (tied entries may come with other ids).

    The k largest entries lie in the k blocks with the largest maxima, so one vectorised max per
    block and a topk over those k blocks replace a topk over the whole row (5x faster at V = 262k).
    """
    k = min(k, values.shape[-1])
    blocks = _blocks(values)
    if blocks is None or k * BLOCK >= values.shape[-1]:
        return values.topk(k, dim=-1)
    chosen = blocks.amax(dim=-1).topk(k, dim=-1).indices
    ids = (chosen.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=values.device)).flatten(1)
    best = values.gather(-1, ids).topk(k, dim=-1)
    return best.values, ids.gather(-1, best.indices)


@dataclass
class _Nucleus:
    """The most likely tokens of a batch of distributions, descending, of which each row keeps a
    prefix. The list may be a row's full sort or only its head (the fast sampler's candidates)."""

    sorted_probs: torch.Tensor  # [B, K] probabilities (of the full row's softmax), descending
    sorted_ids: torch.Tensor  # [B, K] their vocabulary ids
    cdf: torch.Tensor  # [B, K] float64 cumulative sum of sorted_probs
    kept: torch.Tensor  # [B, 1] how many of the most likely tokens each row keeps (>= 1)
    exact: torch.Tensor  # bool [B]: the list decides the row's nucleus (always so for a full sort)

    @property
    def floor(self) -> torch.Tensor:
        """[B]: the probability of each row's least likely kept token."""
        return self.sorted_probs.gather(-1, self.kept - 1).squeeze(-1)


def _nucleus(
    sorted_probs: torch.Tensor,
    sorted_ids: torch.Tensor,
    total_mass: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor | None,
    min_p: torch.Tensor | None,
    frontier: torch.Tensor | None,
) -> _Nucleus:
    """The filters of the module docstring, as a count of kept tokens per sorted row. Every
    filter keeps a prefix of the sorted row, so the result is the smallest of their counts.

    ``total_mass [B]`` is the row's whole probability mass (what top-p is a share of when top-k
    is off). When the list holds only the most likely tokens of the row (zero-padded on the
    right), ``frontier [B, 1]`` is the probability of the most likely token left out: the nucleus
    is known only if its least likely token is strictly more likely than that, and ``exact`` says
    so per row. ``frontier=None``: the list is the whole row.
    """
    cdf = sorted_probs.double().cumsum(dim=-1)
    listed = sorted_probs.shape[-1]
    if frontier is None:
        frontier = torch.full_like(sorted_probs[..., -1:], -1.0)

    def count_at_least(threshold: torch.Tensor) -> torch.Tensor:  # tokens with p >= threshold: a prefix
        return (sorted_probs >= threshold).sum(dim=-1, keepdim=True)

    kept = torch.full_like(sorted_ids[..., :1], listed)
    mass = total_mass.double().unsqueeze(-1)
    top_k_unknown = torch.zeros_like(top_p, dtype=torch.bool)
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, listed).clamp(1, listed).unsqueeze(-1)
        kth = sorted_probs.gather(-1, k - 1)
        kept = torch.where((top_k > 0).unsqueeze(-1), count_at_least(kth), kept)  # ties with the k-th token stay
        mass = torch.where((top_k > 0).unsqueeze(-1), cdf.gather(-1, kept - 1), mass)
        top_k_unknown = (top_k > 0) & ((top_k > listed) | (kth <= frontier).squeeze(-1))
    # top-p over the mass that top-k left: tokens whose preceding mass is below top_p of it
    needed = ((cdf - sorted_probs) < top_p.unsqueeze(-1).double() * mass).sum(dim=-1, keepdim=True).clamp(1)
    by_top_p = count_at_least(sorted_probs.gather(-1, torch.minimum(needed, kept) - 1))  # ties with the last needed stay
    kept = torch.where((top_p >= 1).unsqueeze(-1), kept, torch.minimum(kept, by_top_p))
    if min_p is not None:
        kept = torch.minimum(kept, count_at_least(min_p.unsqueeze(-1) * sorted_probs[..., :1]).clamp(1))
    kept = kept.clamp(1)
    # a filter that the list cannot decide counts at least every token above the frontier, so
    # the smallest count is right when its cut lies above it; top-p then also needs top-k's mass
    exact = (sorted_probs.gather(-1, kept - 1) > frontier).squeeze(-1) & ~(top_k_unknown & (top_p < 1))
    return _Nucleus(sorted_probs, sorted_ids, cdf, kept, exact)


def _greedy_and_divisor(temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(greedy rows [B]: T below :data:`GREEDY_BELOW`, the float32 T to divide logits by [B, 1]).
    Greedy rows divide by 1 (callers take their argmax); T = inf, the uniform limit, divides by
    the largest float so that -inf logits stay -inf."""
    greedy = temperature < GREEDY_BELOW
    divisor = torch.where(greedy, torch.ones_like(temperature), temperature).float().clamp_max(torch.finfo(torch.float32).max)
    return greedy, divisor.unsqueeze(-1)


def _probabilities(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax(logits / T) in float32; greedy rows at T = 1 (callers take their argmax)."""
    return torch.softmax(logits.float() / _greedy_and_divisor(temperature)[1], dim=-1)


def softmax_exponents(logits: torch.Tensor, scale: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, ids): base-2 exponents ``z = (logits - max) * scale`` in a fresh float32 ``[N, V]``,
    so that ``2^z`` is softmax(logits / T) up to a factor per row (its largest entry 1) for
    ``scale [N, 1] = log2(e) / T``, and the ids of each row's ``k`` largest logits, descending
    (the largest 2^z: the map is monotone).

    Few passes over the vocabulary, in place (a copy, the block search of :func:`top_candidates`,
    a subtraction, a product, a threshold), and made for torch's exp2: it keeps its speed where
    most of a large vocabulary underflows, while exp (and softmax) slow down tenfold there. Only
    exp2's subnormal range is slow, three times so at every z in (-276, -126]: z <= -126 (2^z at
    most 2^-126 = 1.2e-38 of the row's largest entry) is flushed to :data:`FLUSHED_EXPONENT`,
    where 2^z = 0 comes fast and 2^z * z = 0, also for -inf logits (not 0 * -inf = NaN). NaN
    stays NaN, and a non-finite maximum (NaN or +inf logits, an all -inf row) makes the row NaN.
    """
    z = logits.to(torch.float32, copy=True)  # a copy even of float32 logits: z is overwritten below
    top_logits, ids = top_candidates(z, k)  # on float32: a bfloat16 block search is 5x slower
    z.sub_(top_logits[:, :1]).mul_(scale)
    torch.nn.functional.threshold_(z, SUBNORMAL_EXPONENT, FLUSHED_EXPONENT)  # keeps z > -126 and NaN
    return z, ids


def _softmax_weights(logits: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(logits / T) up to a factor per row, the ids of each row's :data:`CANDIDATES`
    largest entries): the sampler's own :func:`_probabilities` without its normalisation pass and
    with :func:`softmax_exponents`' speed. Greedy rows at T = 1 (callers take their argmax)."""
    z, ids = softmax_exponents(logits, LOG2_E / _greedy_and_divisor(temperature)[1], CANDIDATES)
    return torch.exp2(z, out=z), ids


def _full_nucleus(probs: torch.Tensor, total: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor | None, min_p: torch.Tensor | None) -> _Nucleus:
    """The reference nucleus: every row sorted in full."""
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    return _nucleus(sorted_probs, sorted_ids, total, top_p, top_k, min_p, frontier=None)


def _head_nucleus(
    probs: torch.Tensor, total: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor | None, min_p: torch.Tensor | None, ids: torch.Tensor | None = None
) -> _Nucleus:
    """The nucleus as far as each row's :data:`CANDIDATES` most likely tokens decide it (their
    ids, descending, if the caller has them)."""
    if ids is None:
        listed, ids = top_candidates(probs, CANDIDATES)
    else:
        listed = probs.gather(-1, ids)
    frontier = listed[..., -1:] if listed.shape[-1] < probs.shape[-1] else None  # ties may lie outside
    return _nucleus(listed, ids, total, top_p, top_k, min_p, frontier)


def _threshold_nucleus(probs: torch.Tensor, total: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor | None, min_p: torch.Tensor | None) -> _Nucleus:
    """The nucleus of rows with many tokens in it, from the tokens with p >= tau only.

    tau is the largest power of two 2^-j (j < 64, else 0) whose tokens hold top_p of the row's
    mass, so the nucleus lies among them; those few are sorted. j is found by bisection: six
    masked sums per row, each over p * 2^j against the one threshold 1, so that a fast scalar
    threshold does the masking (a histogram of exponents would need a serial scatter, 3x slower).
    """
    rows = probs.shape[0]
    target = top_p.double().unsqueeze(-1) * total.double().unsqueeze(-1)
    low = torch.ones(rows, 1, dtype=torch.long, device=probs.device)
    high = torch.full_like(low, 64)  # j = 64 stands for tau = 0, which holds everything
    below_one = math.nextafter(1.0, 0.0)
    for _ in range(6):  # log2(64) halvings of [low, high]
        middle = (low + high) // 2
        scale = torch.exp2(middle.to(probs.dtype))  # exact: a power of two
        held = torch.nn.functional.threshold(probs * scale, below_one, 0.0).sum(dim=-1, keepdim=True) / scale
        holds = (held >= target) & (middle < 64)
        high, low = torch.where(holds, middle, high), torch.where(holds, low, middle + 1)
    tau = torch.where(high < 64, torch.exp2(-high.to(probs.dtype)), 0.0)
    kept = probs >= tau
    row, col = kept.nonzero(as_tuple=True)  # row-major: each row's tokens in vocabulary order
    counts = torch.bincount(row, minlength=rows)
    position = torch.arange(row.numel(), device=probs.device) - (counts.cumsum(0) - counts)[row]
    width = int(counts.max())
    listed = probs.new_zeros(rows, width).index_put_((row, position), probs[row, col])
    sorted_probs, order = listed.sort(dim=-1, descending=True)  # the zero padding stays on the right
    sorted_ids = col.new_zeros(rows, width).index_put_((row, position), col).gather(-1, order)
    frontier = torch.nextafter(tau, torch.full_like(tau, -1.0))  # every token left out lies below tau
    nucleus = _nucleus(sorted_probs, sorted_ids, total, top_p, top_k, min_p, frontier)
    # the list's mass, summed in float64 as the nucleus sums it, must reach the target: the float32
    # sums above may round the other way
    nucleus.exact &= (top_p >= 1) | (nucleus.cdf[:, -1:] >= target).squeeze(-1)
    return nucleus


def _long_nuclei(
    probs: torch.Tensor, total: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor | None, min_p: torch.Tensor | None,
    pending: torch.Tensor, any_pending: bool,
) -> Iterator[tuple[torch.Tensor, _Nucleus]]:
    """(rows, their nucleus) for the ``pending [B]`` rows the first list left undecided: the
    threshold list first, then the full sort for what it leaves. Only rows whose nucleus is
    ``exact`` may be used; ``pending`` is updated in place."""
    for fallback in (_threshold_nucleus, _full_nucleus):
        if not any_pending:
            return
        rows = pending.nonzero().squeeze(-1)
        row_k, row_min_p = (None if f is None else f[rows] for f in (top_k, min_p))
        nucleus = fallback(probs[rows], total[rows], top_p[rows], row_k, row_min_p)
        yield rows, nucleus
        pending[rows] = ~nucleus.exact
        any_pending = bool(pending.any())


def top_p_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    top_k: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact sampling distribution ``[B, V]`` (vocabulary order, float32).

    ``logits [B, V]``; ``temperature [B]`` (below :data:`GREEDY_BELOW` means greedy: a point mass on the argmax);
    ``top_p [B]``: keep the smallest set of most likely tokens whose mass under softmax(logits/T)
    reaches top_p (the top token always, ties with the last kept token too), renormalise.
    Optional per-row ``top_k [B]`` (0: off) and ``min_p [B]`` (0: off), in the order of the
    module docstring. This is the readable reference (a full sort) that :func:`sample_tokens`
    is tested against.
    """
    probs = _probabilities(logits, temperature)
    nucleus = _full_nucleus(probs, probs.sum(dim=-1), top_p, top_k, min_p)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    kept = nucleus.sorted_probs * (ranks < nucleus.kept)
    probs = torch.zeros_like(kept).scatter_(-1, nucleus.sorted_ids, kept)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    argmax = torch.zeros_like(probs).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return torch.where((temperature < GREEDY_BELOW).unsqueeze(-1), argmax, probs)


def nucleus_logits(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    probs: torch.Tensor | None = None,
    probs_top_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`top_p_probs` as logits: float32 ``logits / T`` with every token outside the
    nucleus at -inf, so that their softmax is the exact sampling distribution. For engines whose
    own sampler draws from the logits a model returns (vLLM's ``compute_logits``).

    ``logits [B, V]``; ``temperature [B]`` (below :data:`GREEDY_BELOW`: greedy, only the argmax stays finite, at 0);
    ``top_p [B]`` (>= 1: no cut). The nucleus is found without sorting the vocabulary, as
    :func:`sample_tokens` finds it: each row's :data:`CANDIDATES` most likely tokens decide most
    rows, the threshold list of :func:`_threshold_nucleus` the long nuclei, and a full sort what
    neither decides. ``probs [B, V]`` / ``probs_top_ids [B, CANDIDATES]``: softmax(logits / T) up
    to a factor per row and the ids of its largest entries, if the caller has them (the top-p
    head's statistics take them at T + 1e-8, within :data:`GUARD_TOLERANCE`).
    """
    greedy, divisor = _greedy_and_divisor(temperature)
    if probs is None:
        probs, probs_top_ids = _probabilities(logits, temperature), None
    total = probs.sum(dim=-1)
    nucleus = _head_nucleus(probs, total, top_p, None, None, probs_top_ids)
    floor = nucleus.floor
    pending = ~greedy & (top_p < 1) & ~nucleus.exact
    any_greedy, any_pending = torch.stack([greedy.any(), pending.any()]).tolist()
    for rows, found in _long_nuclei(probs, total, top_p, None, None, pending, any_pending):
        floor[rows] = torch.where(found.exact, found.floor, floor[rows])
    floor = torch.where(top_p >= 1, torch.zeros_like(floor), floor)  # ties with the floor stay, as in top_p_probs
    scaled = (logits.float() / divisor).masked_fill_(probs < floor.unsqueeze(-1), -math.inf)
    if any_greedy:
        argmax_only = torch.full_like(scaled, -math.inf).scatter_(-1, row_argmax(logits)[0].unsqueeze(-1), 0.0)
        scaled = torch.where(greedy.unsqueeze(-1), argmax_only, scaled)
    return scaled


def _draw(nucleus: _Nucleus, uniforms: torch.Tensor, mass: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF sampling over each row's kept tokens, in descending order: the first whose
    cumulative mass exceeds u * ``mass [B, 1]`` (by default the kept tokens' own mass)."""
    if mass is None:
        mass = nucleus.cdf.gather(-1, nucleus.kept - 1)
    position = torch.searchsorted(nucleus.cdf, uniforms.unsqueeze(-1) * mass, right=True).clamp_max(nucleus.kept - 1)
    return nucleus.sorted_ids.gather(-1, position).squeeze(-1)


def _draw_if_settled(nucleus: _Nucleus, uniforms: torch.Tensor, total: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, settled [B]) for top-p rows whose nucleus runs past the listed tokens.

    Such a nucleus holds between top_p * total and total of the mass, so the inverse-CDF draw
    u * (its mass) lies in [u * top_p * total, u * total]. Where that whole range falls on one
    listed token, that token is the exact draw, whatever the nucleus: most draws land well inside
    the list (a trained model's nucleus has a few likely tokens and a long tail), and only the
    others need the nucleus found further.
    """
    upper = total.double().unsqueeze(-1)
    inside = (uniforms.unsqueeze(-1) * upper < nucleus.cdf.gather(-1, nucleus.kept - 1)).squeeze(-1)
    tokens = _draw(nucleus, uniforms, top_p.double().unsqueeze(-1) * upper)
    return tokens, inside & (tokens == _draw(nucleus, uniforms, upper))


def _draw_untruncated(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling from whole rows, in vocabulary order: no filter, so no sort needed."""
    cdf = probs.double().cumsum(dim=-1)
    position = torch.searchsorted(cdf, uniforms.unsqueeze(-1) * cdf[..., -1:], right=True)
    return position.clamp_max(probs.shape[-1] - 1).squeeze(-1)


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    top_k: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    probs_temperature: torch.Tensor | None = None,
    probs_top_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token per row from :func:`top_p_probs` -> ``LongTensor [B]``, without sorting
    the vocabulary.

    Each filtered row first looks only at its :data:`CANDIDATES` most likely tokens (found by
    :func:`top_candidates`); if the nucleus ends strictly above the least likely of them, they
    decide it exactly. A longer top-p nucleus often need not be found at all: the draw is settled
    when it lands on the same listed token whatever the nucleus's mass (:func:`_draw_if_settled`).
    The rows left take the tokens above a threshold that provably holds the nucleus
    (:func:`_threshold_nucleus`), and sort only those; the full sort is left for what neither
    list decides (a top-k reaching past both). Unfiltered rows (top_p >= 1, no
    top-k or min-p) sample the whole row in vocabulary order.
    One uniform per row, from ``uniforms [B]`` if given (see :func:`counter_uniforms`) or else
    from ``generator``. ``probs [B, V]``: a float32 softmax(logits / probs_temperature), up to a
    positive factor per row, that the caller has already (the top-p head takes one at the learned
    T + 1e-8); rows sampled within :data:`GUARD_TOLERANCE` of that T use it, the others are
    recomputed in place, as the statistics compute it (:func:`softmax_exponents`: the probabilities
    of :func:`top_p_probs` up to float32 rounding, those below 2^-126 of the row's largest at 0).
    ``probs_top_ids [B, CANDIDATES]``: the ids of each row's largest probs, descending, if the
    caller has them (the statistics do; rows recomputed get theirs in place too), which spares the
    first list's search.
    Raises :class:`NonFiniteRows` on NaN/inf logits or a NaN T or P, instead of sampling garbage.
    """
    greedy = temperature < GREEDY_BELOW
    untruncated = ~greedy & (top_p >= 1)
    if top_k is not None:
        untruncated &= top_k <= 0
    if min_p is not None:
        untruncated &= min_p <= 0
    stale = torch.ones_like(greedy) if probs is None else ((probs_temperature - temperature).abs() > GUARD_TOLERANCE) & ~greedy
    flags = torch.stack([greedy.all(), greedy.any(), untruncated.any(), stale.all(), stale.any()]).tolist()
    all_greedy, any_greedy, any_untruncated, all_stale, any_stale = flags
    if all_greedy:
        tokens, maxima = row_argmax(logits)
        finite = torch.isfinite(maxima)  # NaN and +inf propagate; an all -inf row stays -inf
        if not bool(finite.all()):
            raise _non_finite_error(~finite, logits, temperature, top_p)
        return tokens
    if all_stale:
        probs, probs_top_ids = _softmax_weights(logits, temperature)
    elif any_stale:
        rows = stale.nonzero().squeeze(-1)
        probs[rows], fresh_ids = _softmax_weights(logits[rows], temperature[rows])
        if probs_top_ids is not None:
            probs_top_ids[rows] = fresh_ids
    total = probs.sum(dim=-1)  # NaN for rows with NaN or +inf logits, or all -inf ones
    finite = torch.isfinite(total) & ~torch.isnan(temperature) & ~torch.isnan(top_p)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64, device=logits.device)
    uniforms = uniforms.to(logits.device, torch.float64)
    # the first list for every row at once (no row gather); the rows it leaves go further below
    nucleus = _head_nucleus(probs, total, top_p, top_k, min_p, probs_top_ids)
    tokens = _draw(nucleus, uniforms)
    pending = ~greedy & ~untruncated & ~nucleus.exact
    if top_k is None and min_p is None:  # pure top-p: most draws of the longer nuclei settle here
        settled_tokens, settled = _draw_if_settled(nucleus, uniforms, total, top_p)
        tokens = torch.where(pending & settled, settled_tokens, tokens)
        pending &= ~settled
    all_finite, any_pending = torch.stack([finite.all(), pending.any()]).tolist()  # the second host sync
    if not all_finite:
        raise _non_finite_error(~finite, logits, temperature, top_p)
    if any_greedy:
        tokens = torch.where(greedy, row_argmax(logits)[0], tokens)
    if any_untruncated:
        rows = untruncated.nonzero().squeeze(-1)
        tokens[rows] = _draw_untruncated(probs[rows], uniforms[rows])
    for rows, nucleus in _long_nuclei(probs, total, top_p, top_k, min_p, pending, any_pending):
        tokens[rows] = torch.where(nucleus.exact, _draw(nucleus, uniforms[rows]), tokens[rows])
    return tokens


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) on int64 tensors holding values in [0, 2**32).
    The multiplier is below 2**27, so products stay below 2**59: no signed overflow."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def counter_uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Stateless uniforms in [0, 1) (float64, 53 random bits): a hash of (seed, counter) per row.

    A request's randomness depends only on its own seed and step, never on the batch it shares,
    so the same seed gives the same text alone or batched, and rows may join or leave freely.
    """
    seeds = seeds.long()
    counters = counters.long().to(seeds.device)
    lo, hi, step = seeds & _MASK32, (seeds >> 32) & _MASK32, counters & _MASK32
    word_a = _mix32(_mix32(_mix32(step) ^ lo) ^ hi)
    word_b = _mix32(_mix32(_mix32(step ^ 0x5BD1E995) ^ hi) ^ lo ^ 0x27D4EB2F)
    bits53 = (word_a << 21) | (word_b >> 11)
    return bits53.double() / float(2**53)
