"""The decode engine on token ids: one running batch drives every caller.

gpt-fast style, in the order the code runs: :func:`prefill` the prompts (each distinct prompt once,
a common prefix once), :func:`sample_step` the first token of every row, then
:meth:`RunningBatch.advance` feeds each row's pending token (and, with speculation, its drafts) in
one forward and samples the next. Rows join between steps (a new request is prefilled on its own
and merged into the batch's KV cache, :mod:`autodeco.kv_cache`) and leave as soon as they finish
or their caller drops them. Plain decoding is the zero-draft case of speculative decoding
(:mod:`autodeco.speculative`).

Each row keeps its own seed and token counter and draws its uniforms from a hash of the two, so
its tokens do not depend on the batch it shares, on prefix sharing or on speculation. One host
transfer per step carries the tokens, T and P of all rows. No tokenizer here: stop strings and text
are the caller's (it calls :meth:`RunningBatch.leave`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from autodeco import kv_cache
from autodeco.errors import AutoDecoError
from autodeco.generation import changed_fields, check_speculative_config
from autodeco.heads import statistics_temperature
from autodeco.kv_cache import left_pad, positions_from_mask
from autodeco.modeling import AutoDecoGenerateOutput, AutoDecoModelForCausalLM, AutoDecoOutput
from autodeco.sampling import BatchedSampling, NonFiniteRows, SamplingParams, counter_uniforms, sample_tokens
from autodeco.speculative import DEFAULT_NUM_DRAFT_TOKENS, ModelDrafter, NgramDrafter, Speculation, accepted_counts

UNIFORM_STEPS = 64  # uniforms are hashed this many tokens ahead per row
MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth its extra forward


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


# ---------------------------------------------------------------------- checks and budgets
def context_length(model: Any) -> int | None:
    """The base's maximum number of positions, if its config states one."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def check_prompt_batch(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Reject what would fail deep inside the model: bad shapes, right padding, empty rows,
    prompts longer than the context, token ids outside the vocabulary."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise AutoDecoError(f"input_ids must be [batch, length] with an attention_mask of the same shape, got {list(input_ids.shape)} and {list(attention_mask.shape)}")
    lengths = attention_mask.sum(dim=-1)
    if bool((lengths == 0).any()):
        raise AutoDecoError(f"prompt rows {(lengths == 0).nonzero().flatten().tolist()} are empty; give every prompt at least one token")
    if bool((attention_mask[:, -1] == 0).any()):
        raise AutoDecoError("the batch is right-padded; pad on the left (tokenizer.padding_side = 'left') so every row ends with its last token")
    vocab = model.config.get_text_config().vocab_size
    if bool(((input_ids < 0) | (input_ids >= vocab)).masked_select(attention_mask.bool()).any()):
        raise AutoDecoError(f"input_ids hold ids outside the vocabulary [0, {vocab}); was the prompt tokenized with this model's tokenizer?")
    limit = context_length(model)
    if limit is not None and int(lengths.max()) >= limit:
        raise AutoDecoError(f"a prompt has {int(lengths.max())} tokens but the model's context is {limit} positions; shorten the prompt")


def token_budget(params: SamplingParams, prompt_length: int, limit: int | None) -> int:
    """New tokens a row may generate: its max_new_tokens, or what the context (``limit``) leaves."""
    return params.max_new_tokens if limit is None else min(params.max_new_tokens, limit - prompt_length)


def request_seeds(params: list[SamplingParams], device: torch.device | str) -> torch.Tensor:
    """Each request's seed; unseeded requests draw one from torch's global generator, so
    ``torch.manual_seed`` makes a whole run reproducible."""
    drawn = torch.randint(0, 2**62, (len(params),)).tolist()
    return torch.tensor([p.seed if p.seed is not None else d for p, d in zip(params, drawn)], dtype=torch.long, device=device)


# ---------------------------------------------------------------------- prefill
def common_prefix_length(prompts: list[list[int]]) -> int:
    """The number of leading tokens every prompt shares."""
    shortest = min(prompts, key=len)
    for index, token in enumerate(shortest):
        if any(prompt[index] != token for prompt in prompts):
            return index
    return len(shortest)


@torch.no_grad()
def prefill(model: Any, prompts: list[list[int]], compute_heads: bool = True, share_prefix: bool = True) -> tuple[AutoDecoOutput, torch.Tensor]:
    """Run distinct prompts through the model -> (output with logits, T and P of each row's last
    position and the KV cache, the attention mask ``[B, L]`` of the cached columns).

    With ``share_prefix``, a prefix common to all prompts (at least :data:`MIN_SHARED_PREFIX`
    tokens) is computed once: its KV cache is copied to every row, each row drops the columns it
    will feed again, and one more forward feeds every row's rest. Rows stay left-padded and
    contiguous, so sliding-window layers see the same keys as in a plain prefill. Caches whose
    layers :mod:`autodeco.kv_cache` cannot cut (quantised, static, linear-attention) prefill each
    prompt whole.
    """
    device = model.device
    shared = common_prefix_length(prompts) if len(prompts) > 1 and share_prefix else 0
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every row feeds at least its last token
    cache = kv_cache.recording_cache(model.config.get_text_config()) if shared >= MIN_SHARED_PREFIX else None
    if cache is None:
        input_ids, mask = left_pad(prompts, 0, device)
        return _forward(model, input_ids, mask, None, compute_heads), mask
    prefix = torch.tensor([prompts[0][:shared]], device=device)
    cache = _forward(model, prefix, torch.ones_like(prefix), cache, compute_heads=False).cache
    fed = max(len(p) for p in prompts) - shared  # the rest, right-aligned: longer rows start inside the prefix
    cache.batch_repeat_interleave(len(prompts))
    cached = torch.tensor([len(p) - fed for p in prompts], device=device)  # prefix columns each row keeps
    mask = kv_cache.compact(cache, torch.ones((len(prompts), shared), dtype=torch.long, device=device), torch.arange(shared, device=device) < cached.unsqueeze(-1))
    kv_cache.record_past(cache, False)
    input_ids, rest_mask = left_pad([p[max(len(p) - fed, 0):] for p in prompts], 0, device)
    mask = torch.cat([mask, rest_mask], dim=-1)
    return _forward(model, input_ids, mask, cache, compute_heads), mask


def _forward(model: Any, input_ids: torch.Tensor, mask: torch.Tensor, cache: Any, compute_heads: bool, keep: int = 1) -> AutoDecoOutput:
    """One forward of ``input_ids [B, J]`` after ``cache`` (``mask`` covers both); logits, T and P
    of the last ``keep`` positions."""
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask)[:, -input_ids.shape[1]:], cache=cache,
                     use_cache=True, logits_to_keep=keep, compute_heads=compute_heads, return_probs=compute_heads)


def _rows_of(out: AutoDecoOutput, index: torch.Tensor) -> AutoDecoOutput:
    """``out`` with its rows (and its cache's rows, in place) taken by ``index`` (repeats allowed)."""
    if out.cache is not None:
        out.cache.batch_select_indices(index)

    def take(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values[index]
    return AutoDecoOutput(logits=take(out.logits), temperature=take(out.temperature), top_p=take(out.top_p), cache=out.cache,
                          probs=take(out.probs), probs_top_ids=take(out.probs_top_ids))


# ---------------------------------------------------------------------- sampling
def sample_step(out: Any, sampling: BatchedSampling, uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next token per row from one model output and one uniform per row (None when every row is
    greedy) -> (tokens, T used, P used)."""
    learned = (out.temperature[:, -1], out.top_p[:, -1]) if sampling.needs_heads else (None, None)
    temperature, top_p = sampling.resolve(*learned, logits=out.logits[:, -1])
    # the sampler reuses the top-p head's softmax for the rows that sample at its temperature
    probs = getattr(out, "probs", None)
    probs_temperature = None if probs is None else statistics_temperature(out.temperature[:, -1])
    tokens = sample_tokens(
        out.logits[:, -1], temperature, top_p, top_k=sampling.top_k, min_p=sampling.min_p, uniforms=uniforms,
        probs=None if probs is None else probs[:, -1], probs_temperature=probs_temperature,
        probs_top_ids=None if probs is None else out.probs_top_ids[:, -1],
    )
    return tokens, temperature, top_p


def _sample_rows(out: AutoDecoOutput, sampling: BatchedSampling, uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, NonFiniteRows | None]:
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
                          probs=flat(out.probs), probs_top_ids=flat(out.probs_top_ids))


class StepUniforms:
    """Each row's uniform for its n-th token: ``counter_uniforms(seed, n)``, hashed
    :data:`UNIFORM_STEPS` tokens ahead for all rows at once (the hash is ~40 small tensor ops,
    which would otherwise be paid at every step)."""

    def __init__(self, seeds: torch.Tensor) -> None:
        self.seeds = seeds
        self.first: list[int] = []  # per row: the token number of the table's first column
        self.table: torch.Tensor | None = None  # [B, UNIFORM_STEPS]

    def take(self, counts: list[int], width: int) -> torch.Tensor:
        """Uniforms ``[B, width]`` for tokens ``counts[i] ..`` of each row i."""
        if self.table is None or any(n < f or n + width > f + UNIFORM_STEPS for n, f in zip(counts, self.first)):
            self.first = list(counts)
            ahead = torch.tensor(counts, device=self.seeds.device) + torch.arange(max(UNIFORM_STEPS, width), device=self.seeds.device).unsqueeze(-1)
            self.table = counter_uniforms(self.seeds.unsqueeze(0), ahead).T
        offsets = torch.tensor([n - f for n, f in zip(counts, self.first)], device=self.seeds.device)
        return self.table.gather(1, offsets.unsqueeze(-1) + torch.arange(width, device=self.seeds.device))

    def select(self, rows: list[int]) -> None:
        """Keep only these rows (their uniforms already hashed stay)."""
        index = torch.tensor(rows, device=self.seeds.device)
        self.seeds = self.seeds[index]
        if self.table is not None:
            self.table, self.first = self.table[index], [self.first[i] for i in rows]


# ---------------------------------------------------------------------- the running batch
class RunningBatch:
    """The rows decoding together and their KV cache.

    Between steps every row has one pending token (sampled, reported, not yet fed to the model);
    :meth:`advance` feeds them all and samples the next, :meth:`join` prefills new rows and
    samples their first. Rows leave when they finish or through :meth:`leave`. With ``speculation``,
    each step also verifies drafts (see :mod:`autodeco.speculative`); its statistics add up in
    ``speculation.stats``. ``share_prefixes`` (the default) prefills rows that join together with
    the same prompt once, and a prefix common to their prompts once (see :func:`prefill`); the
    tokens are the same without it.
    """

    def __init__(self, model: Any, eos_token_ids: set[int], speculation: Speculation | None = None, *, share_prefixes: bool = True) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.speculation = speculation
        self.share_prefixes = share_prefixes
        self.limit = context_length(model)
        self.rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, L]: one column per cached position
        self._pending: torch.Tensor | None = None  # [B] the tokens to feed next
        self._sampling: BatchedSampling | None = None
        self._uniforms: StepUniforms | None = None

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
        distinct: dict[tuple[int, ...], int] = {}  # prompt -> its row in the prefill
        if self.share_prefixes:
            rows = [distinct.setdefault(tuple(r.prompt), len(distinct)) for r in requests]
            prompts = [list(p) for p in distinct]
        else:
            rows, prompts = list(range(len(requests))), [r.prompt for r in requests]
        check_prompt_batch(self.model, *left_pad(prompts, 0))
        params = [r.params for r in requests]
        sampling = BatchedSampling.from_params(params, device)
        seeds = request_seeds(params, device)
        out, mask = prefill(self.model, prompts, sampling.needs_heads, self.share_prefixes)
        if len(prompts) < len(requests):  # rows with the same prompt share its prefill
            index = torch.tensor(rows, device=device)
            out, mask = _rows_of(out, index), mask[index]
        new_rows = [_Row(r, seed, token_budget(r.params, len(r.prompt), self.limit)) for r, seed in zip(requests, seeds.tolist())]
        tokens, temperature, top_p, failure = _sample_rows(out, sampling, counter_uniforms(seeds, torch.zeros_like(seeds)))
        events = self._events(new_rows, out.logits[:, -1:], tokens.unsqueeze(-1), temperature.unsqueeze(-1), top_p.unsqueeze(-1), failure=failure)
        if self.speculation is not None:
            self.speculation.drafter.join([r.prompt + [int(t)] for r, t in zip(requests, tokens.tolist())])
        old_seeds = self._uniforms.seeds if self._uniforms is not None else seeds[:0]
        if not self.rows:
            self._cache, self._mask, self._pending = out.cache, mask, tokens
        else:
            merged = kv_cache.merge(self._cache, self._mask, out.cache, mask)
            self._pending = torch.cat([self._pending, tokens])
            self._mask = merged
        self.rows += new_rows
        self._sampling = BatchedSampling.from_params([r.request.params for r in self.rows], device)
        self._uniforms = StepUniforms(torch.cat([old_seeds, seeds]))
        if self._mask is None:  # a cache kind that cannot be padded: prefill every row again
            self._rebuild()
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
        fed = torch.cat([self._pending.unsqueeze(-1), drafts], dim=-1) if width else self._pending.unsqueeze(-1)  # [B, 1 + K]
        per_row = fed.shape[1]
        self._mask = torch.cat([self._mask, self._mask.new_ones(rows, per_row)], dim=-1)
        if width:
            kv_cache.record_past(self._cache, True)  # rejected drafts' columns are given back below
        out = _forward(self.model, fed, self._mask, self._cache, self._sampling.needs_heads, keep=per_row)
        self._cache = out.cache
        uniforms = self._uniforms.take([len(row.tokens) for row in self.rows], per_row).reshape(-1)
        tokens, temperature, top_p, failure = _sample_rows(_flatten_positions(out), self._sampling.repeat_rows(per_row), uniforms)
        tokens, temperature, top_p = (t.view(rows, per_row) for t in (tokens, temperature, top_p))
        if failure is not None:  # positions -> rows
            failure = NonFiniteRows(str(failure), sorted({i // per_row for i in failure.rows}))
        kept_list = [0] * rows
        if width:
            kept = accepted_counts(tokens, drafts, lengths)  # [B]
            keep = torch.ones_like(self._mask, dtype=torch.bool)
            keep[:, -width:] = torch.arange(width, device=fed.device) < kept.unsqueeze(-1)
            self._mask = kv_cache.compact(self._cache, self._mask, keep)
            kv_cache.record_past(self._cache, False)
            self._pending = tokens.gather(-1, kept.unsqueeze(-1)).squeeze(-1)
            kept_list = kept.tolist()
        else:
            self._pending = tokens[:, 0]
        if self.speculation is not None:
            self.speculation.drafter.accepted(kept_list)
            self.speculation.stats.add(int(lengths.sum()), sum(kept_list), rows)
        return self._finish(self._events(self.rows, out.logits, tokens, temperature, top_p, [k + 1 for k in kept_list], failure))

    def _drafts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's drafts ``[B, K]`` (K = 0 without speculation; short rows filled with token
        0, fed but never kept) and their counts ``[B]``, cut to what each row's budget leaves."""
        device = self._pending.device
        if self.speculation is None:
            return self._pending.new_zeros((len(self.rows), 0)), self._pending.new_zeros(len(self.rows))
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
            self._cache = self._mask = self._pending = self._sampling = self._uniforms = None
            if self.speculation is not None:
                self.speculation.drafter.select([])
            return
        index = torch.tensor(keep, device=self._pending.device)
        self._mask = kv_cache.select_rows(self._cache, self._mask, index)
        self._pending = self._pending[index]
        self._sampling = BatchedSampling.from_params([r.request.params for r in self.rows], self._pending.device)
        self._uniforms.select(keep)
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
        out, self._mask = prefill(self.model, [row.request.prompt + row.tokens[:-1] for row in self.rows], compute_heads=False, share_prefix=False)
        self._cache = out.cache


# ---------------------------------------------------------------------- Hugging Face shaped
def decode_to_tensors(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    params: SamplingParams,
    eos_token_ids: set[int],
    pad_token_id: int,
    speculation: Speculation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hugging Face shaped results: (sequences [B, L + steps] padded after each row's end,
    temperatures [B, steps], top_ps [B, steps]; 0 where a row had ended)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_prompt_batch(model, input_ids, attention_mask)
    # one seed for the batch still gives each row its own stream, as one generator would
    rows = [params if params.seed is None else replace(params, seed=(params.seed + row) % 2**63) for row in range(input_ids.shape[0])]
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    traces: list[list[tuple[int, float, float]]] = [[] for _ in rows]  # (token, T, P) per row
    for event in RunningBatch(model, eos_token_ids, speculation).run([RowRequest(i, prompt, p) for i, (prompt, p) in enumerate(zip(prompts, rows))]):
        traces[event.key].append((event.token, event.temperature, event.top_p))
    steps = max(len(trace) for trace in traces)
    padded = [trace + [(pad_token_id, 0.0, 0.0)] * (steps - len(trace)) for trace in traces]
    generated = torch.tensor([[t for t, _, _ in trace] for trace in padded], dtype=torch.long, device=input_ids.device).reshape(len(rows), steps)
    return (
        torch.cat([input_ids, generated], dim=-1),
        torch.tensor([[t for _, t, _ in trace] for trace in padded], dtype=torch.float32).reshape(len(rows), steps),
        torch.tensor([[p for _, _, p in trace] for trace in padded], dtype=torch.float32).reshape(len(rows), steps),
    )


def assisted_generate(
    model: AutoDecoModelForCausalLM, input_ids: torch.Tensor | None, generation_config: Any, assistant_model: Any, seed: int | None, kwargs: dict[str, Any]
) -> torch.Tensor | AutoDecoGenerateOutput:
    """Hugging Face's assisted generation (``assistant_model=`` or ``prompt_lookup_num_tokens=``)
    as this engine's exact speculative decoding: what it gives without drafts, seed for seed. It
    honours the fields of :data:`autodeco.generation.SPECULATIVE_FIELDS`. Installed as
    :attr:`AutoDecoModelForCausalLM.assisted_generate` (the model class knows no decode loop)."""
    attention_mask = kwargs.pop("attention_mask", None)
    kwargs.pop("input_ids", None)
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    if model_kwargs:
        raise AutoDecoError(f"assisted generation (exact speculative decoding) does not take {sorted(model_kwargs)}; drop them, or the assistant")
    reference = model._default_generation_config()
    check_speculative_config(config, reference)
    if input_ids is None:
        raise AutoDecoError("generate() needs input_ids (a [batch, length] tensor of token ids)")
    budget = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - input_ids.shape[1]
    if budget < 1:
        raise AutoDecoError(f"no new tokens to generate (max_new_tokens={budget}); ask for at least 1")
    sample = bool(config.do_sample)
    params = SamplingParams(
        temperature_scale=config.temperature if sample else 0.0, top_p_scale=config.top_p,
        top_k=config.top_k or 0, min_p=config.min_p or 0.0, max_new_tokens=budget, seed=seed,
    )
    draft_tokens = config.num_assistant_tokens if "num_assistant_tokens" in changed_fields(config, reference) else None
    if assistant_model is not None:  # its greedy drafts make speculative sampling exact (see autodeco.speculative)
        speculation = Speculation(ModelDrafter(getattr(assistant_model, "llm", assistant_model)), draft_tokens or DEFAULT_NUM_DRAFT_TOKENS)
    else:
        speculation = Speculation(NgramDrafter(), config.prompt_lookup_num_tokens)
    eos = config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    pad = config.pad_token_id if config.pad_token_id is not None else min(eos_ids, default=0)
    sequences, temperatures, top_ps = decode_to_tensors(model, input_ids, attention_mask, params, eos_ids, pad, speculation)
    if config.return_dict_in_generate:
        return AutoDecoGenerateOutput(sequences=sequences, temperatures=temperatures, top_ps=top_ps)
    return sequences


AutoDecoModelForCausalLM.assisted_generate = staticmethod(assisted_generate)
