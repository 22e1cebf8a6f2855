"""Continuous batching on token ids: rows join and leave a running batch between decode steps.

:func:`autodeco.decoding.decode` runs one fixed batch to its end; a server needs more: a request
that arrives while others decode is prefilled on its own and merged into the running batch's KV
cache (:mod:`autodeco.kv_cache`), and a row that finishes, or whose client goes away, leaves at
once. Each row keeps its own seed and step counter, so its tokens do not depend on the batch it
shares (the sampler's uniforms are a hash of the two). No tokenizer here: stop strings and text
are the caller's (it calls :meth:`RunningBatch.leave`).

With speculation (:mod:`autodeco.speculative`), :meth:`RunningBatch.advance` verifies each row's
drafts in one forward and a row may gain several tokens per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from autodeco import kv_cache
from autodeco.decoding import (
    check_prompt_batch, context_length, left_pad, positions_from_mask, prefill, request_seeds, sample_step, token_budget,
)
from autodeco.errors import AutoDecoError
from autodeco.modeling import AutoDecoOutput
from autodeco.sampling import BatchedSampling, NonFiniteRows, SamplingParams, counter_uniforms
from autodeco.speculative import Speculation, accepted_counts


@dataclass
class RowRequest:
    """One sequence to generate: its prompt ids, how it decodes, and a caller's ``key`` that
    names it in events. ``logprobs``: also report each token's log-probability and this many
    most likely alternatives (0: only the token's; None: none)."""

    key: Any
    prompt: list[int]
    params: SamplingParams
    logprobs: int | None = None


@dataclass
class TokenEvent:
    """A row's new token with the T and P that sampled it; ``finish_reason`` is "stop" (EOS) or
    "length" (max_new_tokens or the context) on its last token. ``logprob`` and ``top_logprobs``
    ([(id, logprob)], most likely first) are under the model's own softmax, when asked for."""

    key: Any
    token: int
    temperature: float
    top_p: float
    finish_reason: str | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RowFailed:
    """A row that could not continue (its logits, T or P were NaN or infinite): it has left the
    batch, and the other rows go on. ``message`` says what happened."""

    key: Any
    message: str


@dataclass
class _Row:
    request: RowRequest
    seed: int
    budget: int  # new tokens allowed: max_new_tokens, or what the context leaves
    tokens: list[int] = field(default_factory=list)  # generated so far, the pending one included


class RunningBatch:
    """The rows decoding together and their KV cache.

    Between steps every row has one pending token (sampled, reported, not yet fed to the model);
    :meth:`advance` feeds them all and samples the next, :meth:`join` prefills new rows and
    samples their first. Rows leave when they finish or through :meth:`leave`. With ``speculation``,
    each step also verifies drafts (see :mod:`autodeco.speculative`); its statistics add up in
    ``speculation.stats``.
    """

    def __init__(self, model: Any, eos_token_ids: set[int], speculation: Speculation | None = None) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.speculation = speculation
        self.limit = context_length(model)
        self.rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, L]: one column per cached position
        self._pending: torch.Tensor | None = None  # [B] the tokens to feed next
        self._sampling: BatchedSampling | None = None
        self._seeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list[Any]:
        return [row.request.key for row in self.rows]

    def join(self, requests: list[RowRequest]) -> list[TokenEvent | RowFailed]:
        """Prefill ``requests`` as one batch, sample their first tokens, and add them to the
        running rows. Raises :class:`autodeco.AutoDecoError` for prompts the model cannot take;
        a row whose values cannot be sampled gives a :class:`RowFailed` and leaves alone."""
        if not requests:
            return []
        device = self.model.device
        input_ids, mask = left_pad([r.prompt for r in requests], 0, device)
        check_prompt_batch(self.model, input_ids, mask)
        params = [r.params for r in requests]
        sampling = BatchedSampling.from_params(params, device)
        seeds = request_seeds(params, device)
        out = prefill(self.model, input_ids, mask, sampling.needs_heads)
        new_rows = [_Row(r, seed, token_budget(r.params, len(r.prompt), self.limit)) for r, seed in zip(requests, seeds.tolist())]
        tokens, temperature, top_p, failure = _sample_rows(out, sampling, counter_uniforms(seeds, torch.zeros_like(seeds)))
        events = self._events(new_rows, out.logits[:, -1:], tokens.unsqueeze(-1), temperature.unsqueeze(-1), top_p.unsqueeze(-1), failure=failure)
        if self.speculation is not None:
            self.speculation.drafter.join([r.prompt + [int(t)] for r, t in zip(requests, tokens.tolist())])
        if not self.rows:
            self._cache, self._mask, self._pending = out.cache, mask, tokens
        else:
            merged = kv_cache.merge(self._cache, self._mask, out.cache, mask)
            self._pending = torch.cat([self._pending, tokens])
            if merged is None:  # a cache kind that cannot be padded: prefill every row again
                self.rows += new_rows
                self._rebuild()
                return self._finish(events)
            self._mask = merged
        self.rows += new_rows
        self._sampling = BatchedSampling.from_params([r.request.params for r in self.rows], device)
        self._seeds = seeds if self._seeds is None else torch.cat([self._seeds, seeds])
        return self._finish(events)

    def run(self, requests: list[RowRequest]) -> Iterator[TokenEvent]:
        """Join ``requests`` and decode until every row has left; the caller may :meth:`leave`
        rows between events (e.g. at a stop string). A row that fails raises its error: one
        caller owns every row here."""
        events = self.join(requests)
        while True:
            for event in events:
                if isinstance(event, RowFailed):
                    raise AutoDecoError(event.message)
                yield event
            if not self.rows:
                return
            events = self.advance()

    def advance(self) -> list[TokenEvent | RowFailed]:
        """One decode step for every row: feed the pending tokens (and, with speculation, each
        row's drafts) in one forward, sample every fed position with the row's T and P and that
        token's uniform, and keep the drafts that match the samples. A row whose values cannot be
        sampled gives a :class:`RowFailed` and leaves; the others go on."""
        if not self.rows:
            return []
        drafts, lengths = self._drafts()
        rows, width = drafts.shape
        if width and not kv_cache.mergeable(self._cache):
            raise AutoDecoError(f"speculative decoding gives rejected drafts back from the KV cache, which {type(self._cache).__name__} layers of this kind "
                                "cannot do; decode this model without --speculative")
        fed = torch.cat([self._pending.unsqueeze(-1), drafts], dim=-1)  # [B, 1 + K]
        per_row = fed.shape[1]
        self._mask = torch.cat([self._mask, self._mask.new_ones(rows, per_row)], dim=-1)
        positions = positions_from_mask(self._mask)[:, -per_row:]
        needs_heads = self._sampling.needs_heads
        if width:
            kv_cache.record_past(self._cache, True)  # rejected drafts' columns are given back below
        out = self.model(input_ids=fed, attention_mask=self._mask, position_ids=positions, cache=self._cache, use_cache=True,
                         logits_to_keep=per_row, compute_heads=needs_heads, return_probs=needs_heads)
        self._cache = out.cache
        steps = torch.tensor([len(row.tokens) for row in self.rows], device=fed.device).unsqueeze(-1) + torch.arange(per_row, device=fed.device)
        uniforms = counter_uniforms(self._seeds.repeat_interleave(per_row), steps.reshape(-1))
        tokens, temperature, top_p, failure = _sample_rows(_flatten_positions(out), self._sampling.repeat_rows(per_row), uniforms)
        tokens, temperature, top_p = (t.view(rows, per_row) for t in (tokens, temperature, top_p))
        if failure is not None:  # positions -> rows
            failure = NonFiniteRows(str(failure), sorted({i // per_row for i in failure.rows}))
        kept = accepted_counts(tokens, drafts, lengths)  # [B]
        if width:
            keep = torch.ones_like(self._mask, dtype=torch.bool)
            keep[:, -width:] = torch.arange(width, device=fed.device) < kept.unsqueeze(-1)
            self._mask = kv_cache.compact(self._cache, self._mask, keep)
            kv_cache.record_past(self._cache, False)
        self._pending = tokens.gather(-1, kept.unsqueeze(-1)).squeeze(-1)
        kept_list = kept.tolist() if width else [0] * rows
        if self.speculation is not None:
            self.speculation.drafter.accepted(kept_list)
            self.speculation.stats.add(int(lengths.sum()), sum(kept_list), rows)
        return self._finish(self._events(self.rows, out.logits, tokens, temperature, top_p, [k + 1 for k in kept_list], failure))

    def _drafts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's drafts ``[B, K]`` (K = 0 without speculation; short rows filled with token
        0, fed but never kept) and their counts ``[B]``, cut to what each row's budget leaves."""
        device = self._pending.device
        if self.speculation is None:
            return torch.zeros((len(self.rows), 0), dtype=torch.long, device=device), torch.zeros(len(self.rows), dtype=torch.long, device=device)
        proposals = self.speculation.drafter.propose([row.request.prompt + row.tokens for row in self.rows], self.speculation.num_draft_tokens)
        proposals = [p[: max(row.budget - len(row.tokens) - 1, 0)] for p, row in zip(proposals, self.rows)]
        width = max(len(p) for p in proposals)
        drafts = torch.tensor([p + [0] * (width - len(p)) for p in proposals], dtype=torch.long, device=device).reshape(len(proposals), width)
        return drafts, torch.tensor([len(p) for p in proposals], device=device)

    def leave(self, keys: set[Any]) -> None:
        """Drop the rows named by ``keys`` (finished, or their client went away)."""
        keep = [i for i, row in enumerate(self.rows) if row.request.key not in keys]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self._cache = self._mask = self._pending = self._sampling = self._seeds = None
            if self.speculation is not None:
                self.speculation.drafter.select([])
            return
        index = torch.tensor(keep, device=self._pending.device)
        self._mask = kv_cache.select_rows(self._cache, self._mask, index)
        self._pending, self._seeds = self._pending[index], self._seeds[index]
        self._sampling = BatchedSampling.from_params([r.request.params for r in self.rows], self._pending.device)
        if self.speculation is not None:
            self.speculation.drafter.select(keep)

    def _events(self, rows: list[_Row], logits: torch.Tensor, tokens: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                counts: list[int] | None = None, failure: NonFiniteRows | None = None) -> list[TokenEvent | RowFailed]:
        """Record each row's new tokens (the first ``counts[i]`` of row i's ``[B, J]`` positions;
        all J by default), up to its first EOS or the end of its budget; the rows of ``failure``
        get a :class:`RowFailed` instead."""
        counts = counts or [tokens.shape[1]] * len(rows)
        failed = set() if failure is None else set(failure.rows)
        counts = [0 if i in failed else c for i, c in enumerate(counts)]
        host = torch.stack([tokens.double(), temperature.double(), top_p.double()]).cpu().tolist()
        wanted = [(i, j) for i, row in enumerate(rows) if row.request.logprobs is not None for j in range(counts[i])]
        chosen: dict[tuple[int, int], tuple[float, list[tuple[int, float]]]] = {}
        if wanted:
            index = torch.tensor(wanted, device=logits.device)
            log_probs = torch.log_softmax(logits[index[:, 0], index[:, 1]].float(), dim=-1)
            picked = log_probs.gather(-1, tokens[index[:, 0], index[:, 1]].unsqueeze(-1)).squeeze(-1).tolist()
            top = max(rows[i].request.logprobs for i, _ in wanted)
            best = log_probs.topk(top, dim=-1) if top else None
            for n, (i, j) in enumerate(wanted):
                k = rows[i].request.logprobs
                alternatives = list(zip(best.indices[n, :k].tolist(), best.values[n, :k].tolist())) if k else []
                chosen[i, j] = (picked[n], alternatives)
        events: list[TokenEvent | RowFailed] = [RowFailed(rows[i].request.key, str(failure)) for i in sorted(failed)]
        for i, row in enumerate(rows):
            for j in range(counts[i]):
                token = int(host[0][i][j])
                row.tokens.append(token)
                reason = "stop" if token in self.eos_token_ids else "length" if len(row.tokens) >= row.budget else None
                logprob, alternatives = chosen.get((i, j), (None, []))
                events.append(TokenEvent(row.request.key, token, host[1][i][j], host[2][i][j], reason, logprob, alternatives))
                if reason is not None:
                    break
        return events

    def _finish(self, events: list[TokenEvent | RowFailed]) -> list[TokenEvent | RowFailed]:
        """Rows whose event ends them, or that failed, leave now."""
        self.leave({e.key for e in events if isinstance(e, RowFailed) or e.finish_reason is not None})
        return events

    def _rebuild(self) -> None:
        """Prefill every row's prompt and generated tokens (all but the pending one) as a new
        batch: the fallback when caches cannot be merged."""
        sequences = [row.request.prompt + row.tokens[:-1] for row in self.rows]
        input_ids, self._mask = left_pad(sequences, 0, self.model.device)
        self._sampling = BatchedSampling.from_params([r.request.params for r in self.rows], self.model.device)
        self._cache = prefill(self.model, input_ids, self._mask, compute_heads=False).cache
        self._seeds = torch.tensor([row.seed for row in self.rows], device=self.model.device)


def _sample_rows(out: AutoDecoOutput, sampling: BatchedSampling, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, NonFiniteRows | None]:
    """:func:`sample_step`, except that rows with NaN/inf values do not stop the others: they are
    sampled again from neutral values (their tokens are never used) and named in the error
    returned with the tokens."""
    try:
        return *sample_step(out, sampling, uniforms), None
    except NonFiniteRows as failure:
        bad = torch.zeros(out.logits.shape[0], dtype=torch.bool, device=out.logits.device)
        bad[failure.rows] = True

        def neutral(values: torch.Tensor | None, fill: float) -> torch.Tensor | None:
            return None if values is None else values.masked_fill(bad.view(-1, *[1] * (values.dim() - 1)), fill)

        # the heads' softmax is dropped, so the sampler computes every row's afresh (only on this rare path)
        clean = AutoDecoOutput(logits=neutral(out.logits, 0.0), temperature=neutral(out.temperature, 1.0), top_p=neutral(out.top_p, 1.0))
        return *sample_step(clean, sampling, uniforms), failure


def _flatten_positions(out: AutoDecoOutput) -> AutoDecoOutput:
    """A ``[B, J, ...]`` model output as ``B * J`` one-position rows, for the sampler."""
    def flat(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values.reshape(-1, 1, *values.shape[2:])
    return AutoDecoOutput(logits=flat(out.logits), temperature=flat(out.temperature), top_p=flat(out.top_p),
                          probs=flat(getattr(out, "probs", None)), probs_top_ids=flat(getattr(out, "probs_top_ids", None)))
