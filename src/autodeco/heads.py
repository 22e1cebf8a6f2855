"""The two AutoDeco heads, in the released parameter layout (spec section 2).

Parameter names match the released checkpoints (``temp_head.mlp.0.weight`` ...), so a released
heads-only ``model.safetensors`` loads into :class:`AutoDecoHeads` with no key conversion.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_WIDTH = 256
NUM_STATISTICS = 4  # max prob, entropy, variance, top-5 mass
EPS = 1e-8  # the released code's guard in T-scaling and in log(q)


@torch.no_grad()
def probability_statistics(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The top-p head's four extra inputs, over q = softmax(logits / (T + 1e-8)).

    Returns ``[..., 4]``: max(q); -(q * log(q + 1e-8)).sum(); var(q) with torch's default unbiased
    correction (divide by V - 1); the sum of the 5 largest q. Computed in float32 whatever the
    logits' dtype (a bfloat16 softmax over a large vocabulary loses the small entries). They carry
    no gradient: T enters the top-p head detached. The vocabulary-sized work runs in place on two
    buffers, because at a 262k vocabulary memory traffic, not arithmetic, is the cost.
    """
    q = logits.float() / (temperature.float().unsqueeze(-1) + EPS)
    q.sub_(q.amax(dim=-1, keepdim=True)).exp_()
    exp_sum = q.sum(dim=-1, keepdim=True)
    q.div_(exp_sum)  # softmax, in place
    vocab = q.shape[-1]
    max_prob = exp_sum.reciprocal().squeeze(-1)  # the largest entry was exp(0) / exp_sum
    entropy = -(q + EPS).log_().mul_(q).sum(dim=-1)
    # var = (sum q^2 - (sum q)^2 / V) / (V - 1): torch.var's value without a centred copy
    total = q.sum(dim=-1)
    variance = (torch.linalg.vector_norm(q, dim=-1).square() - total.square() / vocab) / (vocab - 1)
    top5 = q.topk(min(5, vocab), dim=-1, sorted=False).values.sum(dim=-1)
    return torch.stack([max_prob, entropy, variance, top5], dim=-1)


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

    def forward(self, hidden: torch.Tensor, temperature: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H]``, ``temperature [...]``, unscaled ``logits [..., V]`` -> top-p ``[...]``."""
        dtype = self.mlp[0].weight.dtype
        features = [hidden.to(dtype), temperature.to(dtype).unsqueeze(-1)]
        if self.use_enhanced_features:
            features.append(probability_statistics(logits, temperature).to(dtype))
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

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [..., H]`` and unscaled ``logits [..., V]`` -> (temperature, top_p), each ``[...]``.

        T enters the top-p head detached, as in the released training code, so the top-p loss
        never moves the temperature head.
        """
        temperature = self.temp_head(hidden)
        if not self.enable_temperature_head:
            temperature = torch.ones_like(temperature)
        top_p = self.top_p_head(hidden, temperature.detach(), logits)
        if not self.enable_top_p_head:
            top_p = torch.ones_like(top_p)
        return temperature, top_p


def expected_head_shapes(hidden_size: int, use_enhanced_features: bool = True) -> dict[str, tuple[int, ...]]:
    """The 8 released tensor names and their shapes for a base of this hidden size."""
    with torch.device("meta"):
        heads = AutoDecoHeads(hidden_size, use_enhanced_features)
    return {name: tuple(t.shape) for name, t in heads.state_dict().items()}
