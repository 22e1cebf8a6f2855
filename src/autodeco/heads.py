"""The two AutoDeco heads, in the released parameter layout (spec section 2).

Parameter names match the released checkpoints (``temp_head.mlp.0.weight`` ...), so a released
heads-only ``model.safetensors`` loads into :class:`AutoDecoHeads` with no key conversion.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeco.sampling import top_candidates

HEAD_WIDTH = 256
NUM_STATISTICS = 4  # max prob, entropy, variance, top-5 mass
EPS = 1e-8  # the released code's guard in T-scaling and in log(q)
CHUNK_ELEMENTS = 2**20  # rows per pass of the statistics: their float32 buffers (4 MB) stay in cache


def statistics_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """What the statistics' softmax divides the logits by: the released T + 1e-8, in float32
    (the same as T itself for T >= 0.25, where 1e-8 is below half a float32 step)."""
    return temperature.float() + EPS


@torch.no_grad()
def probability_statistics(logits: torch.Tensor, temperature: torch.Tensor, probs_out: torch.Tensor | None = None) -> torch.Tensor:
    """The top-p head's four extra inputs, over q = softmax(logits / (T + 1e-8)).

    Returns ``[..., 4]``: max(q); -(q * log(q + 1e-8)).sum(); var(q) with torch's default unbiased
    correction (divide by V - 1); the sum of the 5 largest q. Computed in float32 whatever the
    logits' dtype (a bfloat16 softmax over a large vocabulary loses the small entries). They carry
    no gradient: T enters the top-p head detached. At a 262k vocabulary the passes over q cost
    about as much as the rest of the head, so there are few (the fused softmax, one for the
    entropy, two cheap reductions, the block search of :func:`top_candidates` for the top 5), and
    rows go through in chunks small enough to stay in cache (1.5x faster at batch 32).
    ``probs_out [..., V]`` (float32), if given, receives q itself: decoding at the learned T
    samples from that very softmax and need not compute it again.
    """
    vocab = logits.shape[-1]
    flat_logits, flat_t = logits.reshape(-1, vocab), temperature.reshape(-1)
    flat_out = probs_out.view(-1, vocab) if probs_out is not None else None
    rows = max(1, CHUNK_ELEMENTS // vocab)
    starts = range(0, max(flat_logits.shape[0], 1), rows)  # an empty batch still gives one (empty) chunk
    chunks = [_statistics(flat_logits[i : i + rows], flat_t[i : i + rows], None if flat_out is None else flat_out[i : i + rows]) for i in starts]
    return torch.cat(chunks).reshape(*logits.shape[:-1], NUM_STATISTICS)


def _statistics(logits: torch.Tensor, temperature: torch.Tensor, probs_out: torch.Tensor | None) -> torch.Tensor:
    """:func:`probability_statistics` of ``logits [N, V]``, ``temperature [N]``."""
    q = torch.softmax(logits.float() / statistics_temperature(temperature).unsqueeze(-1), dim=-1)
    if probs_out is not None:
        probs_out.copy_(q)
    vocab = q.shape[-1]
    top5 = top_candidates(q, min(5, vocab))[0]
    entropy = -(q + EPS).log_().mul_(q).sum(dim=-1)
    # var = (sum q^2 - (sum q)^2 / V) / (V - 1): torch.var's value without a centred copy
    total = q.sum(dim=-1)
    variance = (torch.linalg.vector_norm(q, dim=-1).square() - total.square() / vocab) / (vocab - 1)
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

    def forward(self, hidden: torch.Tensor, temperature: torch.Tensor, logits: torch.Tensor, probs_out: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden [..., H]``, ``temperature [...]``, unscaled ``logits [..., V]`` -> top-p ``[...]``
        (``probs_out``: see :func:`probability_statistics`; left untouched without the statistics)."""
        dtype = self.mlp[0].weight.dtype
        features = [hidden.to(dtype), temperature.to(dtype).unsqueeze(-1)]
        if self.use_enhanced_features:
            features.append(probability_statistics(logits, temperature, probs_out).to(dtype))
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
        """Whether forward() takes the softmax over the vocabulary that ``probs_out`` receives."""
        return self.top_p_head.use_enhanced_features

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, probs_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [..., H]`` and unscaled ``logits [..., V]`` -> (temperature, top_p), each ``[...]``.

        T enters the top-p head detached, as in the released training code, so the top-p loss
        never moves the temperature head. ``probs_out``: see :func:`probability_statistics`.
        """
        temperature = self.temp_head(hidden)
        if not self.enable_temperature_head:
            temperature = torch.ones_like(temperature)
        top_p = self.top_p_head(hidden, temperature.detach(), logits, probs_out)
        if not self.enable_top_p_head:
            top_p = torch.ones_like(top_p)
        return temperature, top_p


def expected_head_shapes(hidden_size: int, use_enhanced_features: bool = True) -> dict[str, tuple[int, ...]]:
    """The 8 released tensor names and their shapes for a base of this hidden size."""
    with torch.device("meta"):
        heads = AutoDecoHeads(hidden_size, use_enhanced_features)
    return {name: tuple(t.shape) for name, t in heads.state_dict().items()}
