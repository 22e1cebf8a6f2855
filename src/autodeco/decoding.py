"""The decode loop on token ids (gpt-fast style: prefill, sample, decode one token). No tokenizer.

The model is anything called like :class:`autodeco.AutoDecoModelForCausalLM` (returns logits,
temperature, top_p and a cache, and may return the heads' softmax as ``probs``). Rows stop on their own (EOS, their own max_new_tokens, the context
limit, or a caller's stop test); one host transfer per step carries the tokens, T and P of all rows,
and the sampler reads a few batch-wide flags: no host sync per row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from autodeco.errors import AutoDecoError
from autodeco.heads import statistics_temperature
from autodeco.sampling import BatchedSampling, SamplingParams, counter_uniforms, sample_tokens

RowStopTest = Callable[[int, int], bool]
UNIFORM_STEPS = 64


@dataclass
class DecodeStep:
    """One step for the whole batch. ``tokens[i]`` is -1 for a row that had already finished;
    ``finish_reasons[i]`` is "stop" or "length" for a row that finished at this step."""

    tokens: list[int]
    temperatures: list[float]
    top_ps: list[float]
    finish_reasons: list[str | None]


def left_pad(sequences: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), padded on the left so every row ends at the
    last column, where the next token is predicted."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        if tokens:
            input_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, width - len(tokens):] = 1
    return input_ids.to(device), attention_mask.to(device)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding does not
    shift positions (what Hugging Face generate does)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def context_length(model: Any) -> int | None:
    """The base's maximum number of positions, if its config states one."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


@torch.no_grad()
def prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, compute_heads: bool = True) -> Any:
    """Run the prompt through the model; keep logits, T and P of the last position only."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        use_cache=True,
        logits_to_keep=1,
        compute_heads=compute_heads,
        return_probs=compute_heads,
    )


@torch.no_grad()
def decode_one_token(
    model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Any, compute_heads: bool = True
) -> Any:
    """Feed one new token per row through the cached model."""
    return model(
        input_ids=tokens.unsqueeze(-1),
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
        compute_heads=compute_heads,
        return_probs=compute_heads,
    )


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


def step_uniforms(seeds: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each step's uniforms ``[B]`` for rows with these seeds: :func:`counter_uniforms` of
    (seed, step), made :data:`UNIFORM_STEPS` steps at a time (the hash is ~40 small tensor ops,
    which would otherwise be paid at every step)."""
    for first in itertools.count(0, UNIFORM_STEPS):
        steps = torch.arange(first, first + UNIFORM_STEPS, device=seeds.device).unsqueeze(-1)
        yield from counter_uniforms(seeds.unsqueeze(0), steps).unbind(0)


def request_seeds(params: list[SamplingParams], device: torch.device | str) -> torch.Tensor:
    """Each request's seed; unseeded requests draw one from torch's global generator, so
    ``torch.manual_seed`` makes a whole run reproducible."""
    drawn = torch.randint(0, 2**62, (len(params),)).tolist()
    return torch.tensor([p.seed if p.seed is not None else d for p, d in zip(params, drawn)], dtype=torch.long, device=device)


def token_budget(params: SamplingParams, prompt_length: int, limit: int | None) -> int:
    """New tokens a row may generate: its max_new_tokens, or what the context (``limit``) leaves."""
    return params.max_new_tokens if limit is None else min(params.max_new_tokens, limit - prompt_length)


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


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: list[SamplingParams],
    *,
    eos_token_ids: set[int],
    stop_test: RowStopTest | None = None,
) -> Iterator[DecodeStep]:
    """Generate for a left-padded batch, one :class:`DecodeStep` per step until every row is done.

    ``stop_test(row, token)`` is called for each new token of a live row (the engine uses it for
    stop strings); returning True finishes the row with reason "stop".
    """
    if len(params) != input_ids.shape[0]:
        raise AutoDecoError(f"{len(params)} sampling params for {input_ids.shape[0]} prompts; give one per prompt")
    device = input_ids.device
    check_prompt_batch(model, input_ids, attention_mask)
    limit = context_length(model)
    prompt_lengths = attention_mask.sum(dim=-1).tolist()
    budgets = [token_budget(p, n, limit) for p, n in zip(params, prompt_lengths)]
    sampling = BatchedSampling.from_params(params, device)
    seeds = request_seeds(params, device)
    live = [True] * len(params)
    produced = [0] * len(params)

    uniforms = itertools.repeat(None) if sampling.all_greedy else step_uniforms(seeds)
    out = prefill(model, input_ids, attention_mask, sampling.needs_heads)  # static baselines skip the heads
    position_ids = positions_from_mask(attention_mask)[:, -1:]
    for _, step_uniform in zip(range(max(budgets)), uniforms):
        tokens, temperature, top_p = sample_step(out, sampling, step_uniform)
        host = torch.stack([tokens.double(), temperature.double(), top_p.double()]).cpu()
        token_list = host[0].long().tolist()
        reasons: list[str | None] = [None] * len(params)
        for row, token in enumerate(token_list):
            if not live[row]:
                token_list[row] = -1
                continue
            produced[row] += 1
            if token in eos_token_ids or (stop_test is not None and stop_test(row, token)):
                reasons[row] = "stop"
            elif produced[row] >= budgets[row]:
                reasons[row] = "length"
            live[row] = reasons[row] is None
        yield DecodeStep(token_list, host[1].tolist(), host[2].tolist(), reasons)
        if not any(live):
            return
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
        position_ids = position_ids + 1
        out = decode_one_token(model, tokens, attention_mask, position_ids, out.cache, sampling.needs_heads)


def decode_to_tensors(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    params: SamplingParams,
    eos_token_ids: set[int],
    pad_token_id: int,
    speculation: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hugging Face shaped results: (sequences [B, L + steps] padded after each row's end,
    temperatures [B, steps], top_ps [B, steps]; 0 where a row had ended). With ``speculation``
    (:class:`autodeco.speculative.Speculation`), drafts are verified by a running batch."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # one seed for the batch still gives each row its own stream, as one generator would
    rows = [params if params.seed is None else replace(params, seed=(params.seed + row) % 2**63) for row in range(input_ids.shape[0])]
    traces: list[list[tuple[int, float, float]]] = [[] for _ in rows]  # (token, T, P) per row
    if speculation is None:
        for step in decode(model, input_ids, attention_mask, rows, eos_token_ids=eos_token_ids):
            for row, (token, t, p) in enumerate(zip(step.tokens, step.temperatures, step.top_ps)):
                if token >= 0:
                    traces[row].append((token, t, p))
    else:
        from autodeco.batching import RowRequest, RunningBatch  # batching builds on this module

        check_prompt_batch(model, input_ids, attention_mask)
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
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
