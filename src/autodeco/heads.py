"""The two AutoDeco heads, in the released parameter layout (spec section 2).

Parameter names match the released checkpoints (``temp_head.mlp.0.weight`` ...), so a released
heads-only ``model.safetensors`` loads into :class:`AutoDecoHeads` with no key conversion.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from autodeco.errors import AutoDecoError
from autodeco.sampling import CANDIDATES, LOG2_E, softmax_exponents

HEAD_WIDTH = 256
NUM_STATISTICS = 4  # max prob, entropy, variance, top-5 mass
EPS = 1e-8  # the released code's guard in T-scaling and in log(q)
# Head tensors load from these dtypes only: integers, bools and complex numbers would load as
# nonsense (int32 weights give T = 2 everywhere), and float8 is a quantised format that needs
# scales the released layout has no place for (the heads are small: store them unquantised).
HEAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
CHUNK_ELEMENTS = 2**21  # rows per pass of the statistics: fewer per-op costs than smaller chunks, less cache traffic than larger


def statistics_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """What the statistics' softmax divides the logits by: the released T + 1e-8, in float32
    (the same as T itself for T >= 0.25, where 1e-8 is below half a float32 step)."""
    return temperature.float() + EPS


class SoftmaxOut(NamedTuple):
    """Buffers the statistics fill for decoding at the learned T to reuse (see
    :func:`probability_statistics`)."""

    probs: torch.Tensor  # [..., V] float32: q up to a factor per row (its largest entry is 1)
    top_ids: torch.Tensor  # [..., K] int64, K >= 5: the ids of each row's K largest q, descending

    @classmethod
    def empty_for(cls, logits: torch.Tensor) -> "SoftmaxOut":
        """Buffers for ``logits [..., V]``, with the sampler's :data:`CANDIDATES` top ids per row."""
        ids_shape = (*logits.shape[:-1], min(CANDIDATES, logits.shape[-1]))
        return cls(
            torch.empty(logits.shape, dtype=torch.float32, device=logits.device),
            torch.empty(ids_shape, dtype=torch.long, device=logits.device),
        )


@torch.no_grad()
def probability_statistics(logits: torch.Tensor, temperature: torch.Tensor, out: SoftmaxOut | None = None) -> torch.Tensor:
    """The top-p head's four extra inputs, over q = softmax(logits / (T + 1e-8)).

    Returns ``[..., 4]``: max(q); the entropy -(q * log q).sum(); var(q) with torch's default
    unbiased correction (divide by V - 1); the sum of the 5 largest q. Computed in float32 whatever
    the logits' dtype (a bfloat16 softmax over a large vocabulary loses the small entries). They
    carry no gradient: T enters the top-p head detached.

    The released code takes the entropy as -(q * log(q + 1e-8)).sum(); the guard changes it by at
    most V * 1e-8 nats (0.003 at V = 262k; 2e-5 on average over real Gemma-3-270M steps, the
    size of float32 rounding in the released formula itself). Dropping it gives the entropy from
    sums the other statistics need anyway, -sum q ln q = ln S - sum q (logits / T - max), with no
    log per token: at a 262k vocabulary these passes are most of what AutoDeco adds to a decode
    step, so there are few, in place where they can be (those of
    :func:`~autodeco.sampling.softmax_exponents`, one exponential, three reductions), over chunks
    of rows. q below 2^-126 of the row's largest q is 0 (float32 subnormals, which slow exp2
    threefold; at most V * 1.2e-38 of the mass).
    ``out``, if given, receives q up to a factor per row and the ids of its largest entries
    (found anyway for the top 5): decoding at the learned T samples from them, with no second
    pass over the vocabulary.
    """
    vocab = logits.shape[-1]
    flat_logits, flat_t = logits.reshape(-1, vocab), temperature.reshape(-1)
    flat_out = None if out is None else SoftmaxOut(out.probs.view(-1, vocab), out.top_ids.view(-1, out.top_ids.shape[-1]))
    rows = max(1, CHUNK_ELEMENTS // vocab)
    starts = range(0, max(flat_logits.shape[0], 1), rows)  # an empty batch still gives one (empty) chunk
    chunks = [
        _statistics(flat_logits[i : i + rows], flat_t[i : i + rows], None if flat_out is None else SoftmaxOut(*(t[i : i + rows] for t in flat_out)))
        for i in starts
    ]
    return torch.cat(chunks).reshape(*logits.shape[:-1], NUM_STATISTICS)


def _statistics(logits: torch.Tensor, temperature: torch.Tensor, out: SoftmaxOut | None) -> torch.Tensor:
    """:func:`probability_statistics` of ``logits [N, V]``, ``temperature [N]``."""
    vocab = logits.shape[-1]
    scale = LOG2_E / statistics_temperature(temperature).unsqueeze(-1)
    z, top_ids = softmax_exponents(logits, scale, min(5 if out is None else out.top_ids.shape[-1], vocab))
    if out is not None:
        out.top_ids.copy_(top_ids)
    weights = torch.exp2(z) if out is None else torch.exp2(z, out=out.probs)  # q * S: no division pass
    total = weights.sum(dim=-1)  # S
    top5 = weights.gather(-1, top_ids[:, :5]) / total.unsqueeze(-1)
    # var = (sum q^2 - (sum q)^2 / V) / (V - 1), torch.var's value without a centred copy; sum q = 1
    variance = ((torch.linalg.vector_norm(weights, dim=-1) / total).square() - 1.0 / vocab) / (vocab - 1)
    # -sum q ln q = ln S - ln(2) sum q z: no log per token (see the docstring); z is not needed after
    entropy = total.log() - math.log(2.0) * z.mul_(weights).sum(dim=-1) / total
    return torch.stack([top5[:, 0], entropy, variance, top5.sum(dim=-1)], dim=-1)


def _mlp(in_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, HEAD_WIDTH), nn.ReLU(), nn.Linear(HEAD_WIDTH, 1), nn.Sigmoid())


class TemperatureHead(nn.Module):
    """T = 2 * sigmoid(MLP(h)), in (0, 2)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = _mlp(hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H]`` -> temperature ``[...]``."""
        return 2.0 * self.mlp(hidden.to(self.mlp[0].weight.dtype)).squeeze(-1)


class TopPHead(nn.Module):
    """P = sigmoid(MLP([h, T, max_prob, entropy, variance, top5_sum])), in (0, 1).

    With ``use_enhanced_features=False`` the input is ``[h, T]`` (H + 1 features).
    """

    def __init__(self, hidden_size: int, use_enhanced_features: bool = True) -> None:
        super().__init__()
        self.use_enhanced_features = use_enhanced_features
        self.mlp = _mlp(hidden_size + 1 + (NUM_STATISTICS if use_enhanced_features else 0))

    def forward(self, hidden: torch.Tensor, temperature: torch.Tensor, logits: torch.Tensor, softmax_out: SoftmaxOut | None = None) -> torch.Tensor:
        """``hidden [..., H]``, ``temperature [...]``, unscaled ``logits [..., V]`` -> top-p ``[...]``
        (``softmax_out``: see :func:`probability_statistics`; left untouched without the statistics)."""
        dtype = self.mlp[0].weight.dtype
        features = [hidden.to(dtype), temperature.to(dtype).unsqueeze(-1)]
        if self.use_enhanced_features:
            features.append(probability_statistics(logits, temperature, softmax_out).to(dtype))
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)


class AutoDecoHeads(nn.Module):
    """Both heads on the tensor fed to the LM head; state-dict keys are the released ones.

    A disabled head (``enable_*=False`` in the checkpoint config: it was not trained) yields the
    neutral value, T = 1 or P = 1, instead of an untrained prediction.
    """

    def __init__(
        self,
        hidden_size: int,
        use_enhanced_features: bool = True,
        enable_temperature_head: bool = True,
        enable_top_p_head: bool = True,
    ) -> None:
        super().__init__()
        self.temp_head = TemperatureHead(hidden_size)
        self.top_p_head = TopPHead(hidden_size, use_enhanced_features)
        self.enable_temperature_head = enable_temperature_head
        self.enable_top_p_head = enable_top_p_head

    @property
    def hidden_size(self) -> int:
        return self.temp_head.mlp[0].in_features

    @property
    def computes_probabilities(self) -> bool:
        """Whether forward() takes the softmax over the vocabulary that ``softmax_out`` receives."""
        return self.top_p_head.use_enhanced_features

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, softmax_out: SoftmaxOut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [..., H]`` and unscaled ``logits [..., V]`` -> (temperature, top_p), each ``[...]``.

        T enters the top-p head detached, as in the released training code, so the top-p loss
        never moves the temperature head. ``softmax_out``: see :func:`probability_statistics`.
        """
        temperature = self.temp_head(hidden)
        if not self.enable_temperature_head:
            temperature = torch.ones_like(temperature)
        top_p = self.top_p_head(hidden, temperature.detach(), logits, softmax_out)
        if not self.enable_top_p_head:
            top_p = torch.ones_like(top_p)
        return temperature, top_p


def expected_head_shapes(hidden_size: int, use_enhanced_features: bool = True) -> dict[str, tuple[int, ...]]:
    """The 8 released tensor names and their shapes for a base of this hidden size."""
    with torch.device("meta"):
        heads = AutoDecoHeads(hidden_size, use_enhanced_features)
    return {name: tuple(t.shape) for name, t in heads.state_dict().items()}


def heads_from_tensors(
    tensors: dict[str, torch.Tensor],
    source: str,
    *,
    use_enhanced_features: bool = True,
    enable_temperature_head: bool = True,
    enable_top_p_head: bool = True,
) -> AutoDecoHeads:
    """Float32 heads built from checkpoint tensors, which must be exactly the 8 released ones
    with consistent shapes (the hidden size is read off ``temp_head.mlp.0.weight``), floating
    point (:data:`HEAD_DTYPES`) and finite; ``source`` names where they came from in the errors."""
    for name, tensor in tensors.items():
        if tensor.dtype not in HEAD_DTYPES:
            dtype = str(tensor.dtype).removeprefix("torch.")
            quantised = ", a quantised format" if tensor.dtype.is_floating_point else ""  # float8
            raise AutoDecoError(
                f"{source}: head tensor {name} is {dtype}{quantised}; heads must be floating point (float32/bfloat16/float16): "
                "save them again from the trained heads"
            )
    first_layer = tensors.get("temp_head.mlp.0.weight")
    hidden = first_layer.shape[-1] if first_layer is not None else 0  # 0: reported as missing below
    expected = expected_head_shapes(hidden, use_enhanced_features)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise AutoDecoError(f"{source} does not hold the 8 AutoDeco head tensors: {'; '.join(parts)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AutoDecoError(
                f"{source}: {name} has shape {list(tensors[name].shape)} but hidden size {hidden} "
                f"{'with' if use_enhanced_features else 'without'} the top-p statistics needs {list(shape)}; "
                "check use_enhanced_features in config.json"
            )
    heads = AutoDecoHeads(
        hidden, use_enhanced_features=use_enhanced_features,
        enable_temperature_head=enable_temperature_head, enable_top_p_head=enable_top_p_head,
    )
    weights = {k: v.float() for k, v in tensors.items()}
    broken = sorted(name for name, weight in weights.items() if not torch.isfinite(weight).all())
    if broken:
        raise AutoDecoError(
            f"{source}: the heads' weights hold NaN or infinite values ({', '.join(broken)}): the file is corrupt "
            "or the training that wrote it diverged; use an earlier checkpoint or train again (e.g. with a lower --lr)"
        )
    heads.load_state_dict(weights)
    return heads
