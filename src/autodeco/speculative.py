"""Draft sources for exact speculative decoding, and the acceptance rule.

A drafter proposes up to ``k`` next tokens per row; the target (AutoDeco) model then scores the
pending token and every draft in one forward, with its learned T and P at each position, and
:meth:`autodeco.decoding.RunningBatch.advance` keeps the longest prefix it would have sampled
itself. Every draft source here drafts deterministically (a point mass q), so the acceptance rule
of speculative sampling -- accept x with probability min(1, p(x)/q(x)), otherwise sample from
norm(max(0, p - q)) -- becomes: sample from p at the position (with that token's own uniform) and
accept the draft iff the sample equals it; the first sample that differs is the corrected token,
and it is distributed as norm(p without x), exactly the residual. Because each token's uniform is
a hash of (seed, token index), a seeded row gives the same tokens with and without speculation.

- :class:`NgramDrafter`: prompt lookup (no second model): the tokens that followed the latest
  earlier occurrence of the row's last n tokens.
- :class:`ModelDrafter`: greedy drafts from a smaller causal LM that shares the tokenizer, with its
  own KV cache kept in step with the batch.
- :func:`early_exit_model`: the target's first k layers with its final norm and LM head, as a
  model for :class:`ModelDrafter` (a self-draft sharing the target's weights).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from autodeco import kv_cache
from autodeco.errors import AutoDecoError
from autodeco.kv_cache import left_pad, positions_from_mask
from autodeco.modeling import load_base

DEFAULT_NUM_DRAFT_TOKENS = 4
DEFAULT_NGRAM = 3
DEFAULT_MIN_NGRAM = 2  # one-token matches draft mostly noise on free text (Gemma batch 4: 0.67x with them, 1.09x without)


class Drafter(Protocol):
    """Proposes drafts for the rows of a running batch, in the batch's row order."""

    def join(self, contexts: list[list[int]]) -> None:
        """New rows at the end of the batch; ``contexts``: their tokens so far (prompt, then the
        pending token)."""

    def select(self, rows: list[int]) -> None:
        """Only these rows (indices into the current rows) stay."""

    def propose(self, contexts: list[list[int]], k: int) -> list[list[int]]:
        """Up to ``k`` draft tokens per row to follow ``contexts`` (each row's tokens so far)."""

    def accepted(self, counts: list[int]) -> None:
        """How many of the last proposal's tokens each row kept."""


@dataclass
class SpeculationStats:
    """Draft tokens proposed and accepted, and the target's forwards (counted per row: a step of
    8 rows is 8) with the tokens they produced."""

    drafted: int = 0
    accepted: int = 0
    forwards: int = 0

    @property
    def tokens(self) -> int:
        """Tokens the forwards produced: each row's accepted drafts and one sampled token."""
        return self.accepted + self.forwards

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards if self.forwards else 0.0

    def add(self, drafted: int, accepted: int, rows: int) -> None:
        """One target forward over ``rows`` rows (each gains its accepted drafts and one token)."""
        self.drafted += drafted
        self.accepted += accepted
        self.forwards += rows

    def to_dict(self) -> dict[str, float]:
        return {"drafted": self.drafted, "accepted": self.accepted, "acceptance_rate": self.acceptance_rate,
                "target_forwards": self.forwards, "tokens_per_forward": self.tokens_per_forward}


@dataclass
class Speculation:
    """Speculative decoding settings for a run (``drafter``, up to ``num_draft_tokens`` drafts per
    row and step); ``stats`` adds up what happened."""

    drafter: Drafter
    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS
    stats: SpeculationStats = field(default_factory=SpeculationStats)

    def __post_init__(self) -> None:
        if self.num_draft_tokens < 1:
            raise AutoDecoError(f"the number of draft tokens must be >= 1, got {self.num_draft_tokens}")


def accepted_counts(samples: torch.Tensor, drafts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The number of leading drafts ``[B, K]`` each row keeps: those equal to the target's own
    samples at the same positions (``samples [B, >=K]``), within the row's ``lengths [B]``."""
    positions = torch.arange(drafts.shape[1], device=drafts.device)
    matches = (samples[:, : drafts.shape[1]] == drafts) & (positions < lengths.unsqueeze(-1))
    return matches.long().cumprod(dim=-1).sum(dim=-1)


class NgramDrafter:
    """Prompt-lookup drafting: find the latest earlier occurrence of the row's last ``n`` tokens
    (``n`` from ``max_ngram`` down to ``min_ngram``) and propose the tokens that followed it. Strong when the
    answer repeats the input (editing, extraction, summaries); cheap when it does not (no model
    runs, and a wrong draft only widens the verifying forward)."""

    def __init__(self, max_ngram: int = DEFAULT_NGRAM, min_ngram: int = DEFAULT_MIN_NGRAM) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise AutoDecoError(f"n-gram lengths need 1 <= min <= max, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def join(self, contexts: list[list[int]]) -> None:
        pass

    def select(self, rows: list[int]) -> None:
        pass

    def accepted(self, counts: list[int]) -> None:
        pass

    def propose(self, contexts: list[list[int]], k: int) -> list[list[int]]:
        return [self._lookup(context, k) for context in contexts]

    def _lookup(self, context: list[int], k: int) -> list[int]:
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):  # latest match first
                if context[start : start + n] == tail:
                    return context[start + n : start + n + k]
        return []


class ModelDrafter:
    """Greedy drafts from a causal LM that shares the target's tokenizer. Its KV cache follows the
    batch: rows join by prefill, leave, and keep only the drafts the target accepted."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [B, L]: one column per cached position
        self.fed: list[int] = []  # how many of each row's tokens the cache holds
        self._fed_drafts = 0  # drafts of the last proposal that the cache holds (all but the last)

    def join(self, contexts: list[list[int]]) -> None:
        ids, mask = left_pad([c[:-1] for c in contexts], 0, self.model.device)
        _, cache = kv_cache.forward_with_cache(self.model, None, input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True, logits_to_keep=1)
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            self.mask = kv_cache.merge(self.cache, self.mask, cache, mask)
            if self.mask is None:
                raise AutoDecoError("this draft model's KV cache kind cannot be merged; use it with one batch at a time")
        self.fed += [len(c) - 1 for c in contexts]

    def select(self, rows: list[int]) -> None:
        if not rows:
            self.cache, self.mask, self.fed = None, None, []
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = kv_cache.select_rows(self.cache, self.mask, index)
        self.fed = [self.fed[i] for i in rows]

    @torch.no_grad()
    def propose(self, contexts: list[list[int]], k: int) -> list[list[int]]:
        # feed what the cache lacks (the pending token, and the last draft when all were kept)
        missing = [c[f:] for c, f in zip(contexts, self.fed)]
        width = max(len(m) for m in missing)
        block = torch.tensor([[0] * (width - len(m)) + m for m in missing], device=self.mask.device)
        fresh = torch.tensor([[0] * (width - len(m)) + [1] * len(m) for m in missing], device=self.mask.device, dtype=self.mask.dtype)
        drafts = []
        kv_cache.record_past(self.cache, True)  # until accepted() gives the rejected drafts back
        for _ in range(k):
            self.mask = torch.cat([self.mask, fresh], dim=-1)
            positions = positions_from_mask(self.mask)[:, -block.shape[1]:]
            out, self.cache = kv_cache.forward_with_cache(
                self.model, self.cache, input_ids=block, attention_mask=self.mask, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            block = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            drafts.append(block)
            fresh = self.mask.new_ones(len(contexts), 1)
        self.fed = [len(c) for c in contexts]
        self._fed_drafts = k - 1  # the last draft was never fed
        return torch.cat(drafts, dim=-1).tolist()

    def accepted(self, counts: list[int]) -> None:
        kept = torch.tensor(counts, device=self.mask.device).clamp(max=self._fed_drafts)
        keep = torch.ones_like(self.mask, dtype=torch.bool)  # drop the fed drafts the target rejected, and feeding holes
        keep[:, self.mask.shape[1] - self._fed_drafts:] = torch.arange(self._fed_drafts, device=kept.device) < kept.unsqueeze(-1)
        self.mask = kv_cache.compact(self.cache, self.mask, keep)
        kv_cache.record_past(self.cache, False)
        self.fed = [f + k for f, k in zip(self.fed, kept.tolist())]


SPECULATIVE_HELP = "ngram (prompt lookup), draft:MODEL (a smaller model with the same tokenizer) or early-exit:K (the first K layers)"


def make_speculation(spec: str, model: Any, num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS, *, trust_remote_code: bool = False) -> Speculation:
    """A :class:`Speculation` from its command-line form: ``ngram``, ``draft:MODEL`` or
    ``early-exit:K``, for the AutoDeco ``model`` it drafts for."""
    kind, _, argument = spec.partition(":")
    if kind == "ngram" and not argument:
        drafter: Drafter = NgramDrafter()
    elif kind == "draft" and argument:
        draft = load_base(argument, dtype=model.llm.dtype, device=model.device, trust_remote_code=trust_remote_code)
        vocab, draft_vocab = model.config.get_text_config().vocab_size, draft.config.get_text_config().vocab_size
        if draft_vocab != vocab:
            raise AutoDecoError(f"the draft model {argument} has a vocabulary of {draft_vocab} tokens, the target {vocab}; draft with a model that shares the target's tokenizer")
        drafter = ModelDrafter(draft)
    elif kind == "early-exit" and argument.isdigit():
        drafter = ModelDrafter(early_exit_model(model.llm, int(argument)))
    else:
        raise AutoDecoError(f"--speculative {spec!r} is not understood; use {SPECULATIVE_HELP}")
    return Speculation(drafter, num_draft_tokens)


def early_exit_model(llm: Any, layers: int) -> Any:
    """A view of ``llm`` (a Hugging Face causal LM) that runs only its first ``layers`` decoder
    layers, then its final norm and LM head; it shares every weight with ``llm``."""
    inner = llm.get_decoder()
    total = llm.config.get_text_config().num_hidden_layers
    stacks = [name for name, module in inner.named_children() if isinstance(module, torch.nn.ModuleList) and len(module) == total]
    if len(stacks) != 1:
        raise AutoDecoError(f"early-exit drafting could not find the decoder layers of {type(llm).__name__}; use ngram or draft:MODEL")
    if not 1 <= layers < total:
        raise AutoDecoError(f"early-exit:{layers} needs 1 <= K < {total} (the base has {total} layers)")
    config = copy.deepcopy(llm.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = layers
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = text_config.layer_types[:layers]
    view_inner = copy.copy(inner)
    view_inner._modules = dict(inner._modules)
    setattr(view_inner, stacks[0], torch.nn.ModuleList(list(getattr(inner, stacks[0]))[:layers]))
    view_inner.config = text_config
    view = copy.copy(llm)
    view._modules = dict(llm._modules)
    view.config = config
    names = [name for name, module in llm.named_children() if module is inner]
    if not names:
        raise AutoDecoError(f"early-exit drafting needs a causal LM whose decoder is a direct child; {type(llm).__name__} nests it deeper")
    setattr(view, names[0], view_inner)
    return view
