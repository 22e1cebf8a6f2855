"""Metrics of open-ended generation: diversity, degeneration and a quality proxy.

Text metrics are pure functions on words (:func:`words`: runs of letters, digits and apostrophes,
and each punctuation mark), so they do not depend on the model's tokenizer:

- distinct-n (Li et al., 2016) over the samples of one prompt: unique n-grams / all n-grams, pooled;
- self-BLEU (Zhu et al., 2018) across the samples of one prompt: BLEU-4 of each sample against
  the others as references, averaged (1: all samples the same; near 0: they share no n-grams);
- the repeated 4-gram rate of one sample (Welleck et al., 2020): 1 - unique / all 4-grams in it.

Quality proxy (Holtzman et al., 2020): the teacher-forced log-perplexity of a continuation under
the base model at T=1 (plain softmax of its logits, no top-p), i.e. minus the mean log-probability
per token, for the generated continuations and for the human one after the same prompt. A
strategy is judged by how close its log-perplexity is to the human text's: much lower means
dull or repetitive text (greedy-like loops are very likely), much higher means incoherent text.
Biases to keep in mind: the judge is the model that generated the text, so it rewards what the
model itself finds likely, not what a reader finds good; a text can match human perplexity and
still drift off the prompt; the human reference is Early Modern English, which a small model
finds surprising, so the human level itself is high; per-token means hide a local loop in an
otherwise likely text (the repeated 4-gram rate shows those); and texts of different lengths are
not quite comparable (later tokens have more context), so the human reference should be cut to
the generated length.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from autodeco.evaluation.metrics import distinct_n, mean_and_stderr
from autodeco.evaluation.tasks import require
from autodeco.kv_cache import forward_with_cache
from autodeco.modeling import AutoDecoModelForCausalLM, logits_from_hidden

BLEU_ORDER = 4
REPEAT_ORDER = 4
_WORD = re.compile(r"[\w']+|[^\w\s]")


def words(text: str) -> list[str]:
    """The words of a text for the text metrics: ``"Go, go!"`` -> ``["Go", ",", "go", "!"]``."""
    return _WORD.findall(text)


def self_bleu(samples: Sequence[Sequence[Hashable]], order: int = BLEU_ORDER) -> float:
    """Self-BLEU of the samples of one prompt: the sentence BLEU-``order`` (uniform weights) of
    each sample against all the others as references, averaged over samples. NLTK's smoothing
    method 1 (an epsilon count for an n-gram order with no match) keeps one missing 4-gram from
    zeroing a score; samples shorter than ``order`` words score below 1 even when identical."""
    if len(samples) < 2:
        raise ValueError(f"self-BLEU needs at least two samples, got {len(samples)}")
    bleu = require("nltk.translate.bleu_score", "nltk")
    smoothing = bleu.SmoothingFunction().method1
    weights = (1.0 / order,) * order
    scores = [
        bleu.sentence_bleu([list(other) for j, other in enumerate(samples) if j != i], list(sample), weights=weights, smoothing_function=smoothing)
        for i, sample in enumerate(samples)
    ]
    return sum(scores) / len(scores)


def repetition_rate(sequence: Sequence[Hashable], n: int = REPEAT_ORDER) -> float:
    """The share of one sequence's n-grams that repeat an earlier one: 1 - unique / all (0 when
    it has no n-gram)."""
    grams = [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def prompt_diversity(texts: Sequence[str]) -> dict[str, float]:
    """The text metrics of one prompt's samples: distinct-1 and -2 (pooled over the samples),
    self-BLEU and the mean repeated 4-gram rate."""
    tokens = [words(text) for text in texts]
    return {
        "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2), "self_bleu": self_bleu(tokens),
        "rep_4": sum(repetition_rate(t) for t in tokens) / len(tokens),
    }


def summarise_prompts(rows: Sequence[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Per-prompt values -> ``{metric: {"mean", "stderr", "n"}}`` over the prompts that have it
    (prompts are the unit of sampling; the standard error is over prompts)."""
    names = sorted({name for row in rows for name in row})
    summary = {}
    for name in names:
        values = [value for row in rows if (value := row.get(name)) is not None]
        mean, stderr = mean_and_stderr(values)
        summary[name] = {"mean": mean, "stderr": stderr, "n": len(values)}
    return summary


def _base(model: Any) -> Any:
    return model.llm if isinstance(model, AutoDecoModelForCausalLM) else model


@torch.no_grad()
def continuation_logprobs(
    model: Any, prompt: Sequence[int], continuations: Sequence[Sequence[int]], batch_size: int = 16, chunk: int = 256,
) -> list[list[float]]:
    """Teacher-forced log-probability of every token of each continuation after ``prompt``, under
    the base model (an :class:`AutoDecoModelForCausalLM`'s ``llm``, or a plain causal LM) at T=1:
    float32 log-softmax of its logits, no top-p. One list per continuation (empty for an empty one).

    The prompt runs once; its KV cache is copied for each batch of ``batch_size`` continuations
    (right-padded, so no real token sees a pad), and the LM head runs only at the ``chunk``
    positions at a time that predict continuation tokens (a 262k vocabulary in float32 is 1 MB a
    position)."""
    if not prompt:
        raise ValueError("continuation_logprobs needs a prompt of at least one token (e.g. BOS)")
    llm = _base(model)
    decoder, device = llm.get_decoder(), llm.get_output_embeddings().weight.device
    out, prompt_cache = forward_with_cache(decoder, None, input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
    last = out.last_hidden_state[0, -1:]  # predicts every continuation's first token
    results: list[list[float]] = [[] for _ in continuations]
    order = [i for i in range(len(continuations)) if continuations[i]]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(continuations[i]) for i in rows)
        hidden = [last] * len(rows)
        if width > 1:
            ids = torch.zeros((len(rows), width - 1), dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, : len(continuations[i]) - 1] = torch.tensor(continuations[i][:-1])
            cache = copy.deepcopy(prompt_cache)
            cache.batch_repeat_interleave(len(rows))
            mask = torch.ones((len(rows), len(prompt) + width - 1), dtype=torch.long, device=device)  # pads only follow real tokens
            states = forward_with_cache(decoder, cache, input_ids=ids.to(device), attention_mask=mask, use_cache=True)[0].last_hidden_state
            hidden = [torch.cat([last, states[row, : len(continuations[i]) - 1]]) for row, i in enumerate(rows)]
        flat = torch.cat(hidden)
        targets = torch.tensor([t for i in rows for t in continuations[i]], device=device)
        scores = torch.cat([
            torch.log_softmax(logits_from_hidden(llm, flat[at:at + chunk]).float(), dim=-1).gather(-1, targets[at:at + chunk, None])[:, 0]
            for at in range(0, len(flat), chunk)
        ]).tolist()
        at = 0
        for i in rows:
            results[i] = scores[at:at + len(continuations[i])]
            at += len(continuations[i])
    return results
