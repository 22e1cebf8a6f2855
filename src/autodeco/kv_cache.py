"""Row surgery on Hugging Face KV caches, for continuous batching: rows leave, rows join.

A decoding batch is left-padded: every row's newest token sits in the last column, and the
attention mask marks each row's padding. Two such batches merge by padding the shorter one's
keys and values on the left to the longer one's length (RoPE is applied before keys are cached,
so a key does not depend on its column). Sliding-window layers keep their last ``window - 1``
columns, right-aligned, the same way. Other layer kinds (quantised, static, linear-attention,
indexed) are not merged: :func:`merge` returns False and the caller rebuilds the batch.

Speculative decoding feeds several drafted tokens at once and keeps a different number of them
per row: :func:`compact` drops each row's rejected columns and right-aligns what is left, so the
batch stays left-padded (sliding-window layers must record their past for that round, see
:func:`record_past`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

MERGEABLE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


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


def forward_with_cache(model: Any, cache: Any, **inputs: Any) -> tuple[Any, Any]:
    """(output, its KV cache) of a transformers model's forward given ``cache``, by the name its
    version uses: ``cache`` from transformers 5.2x, ``past_key_values`` before (the vLLM plugin's
    environments pin 5.16-5.19)."""
    out = model(**inputs, **{_cache_keyword(type(model)): cache})
    return out, next((out[key] for key in ("cache", "past_key_values") if key in out.keys()), None)  # keys(): no renaming warning


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def pad_left(values: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``values`` with zeros prepended along ``dim`` up to ``width`` entries."""
    missing = width - values.shape[dim]
    if missing <= 0:
        return values
    shape = list(values.shape)
    shape[dim] = missing
    return torch.cat([values.new_zeros(shape), values], dim=dim)


def recording_cache(config: PretrainedConfig) -> DynamicCache | None:
    """An empty KV cache for a base with this (text) config whose sliding-window layers keep every
    column until :func:`compact` trims them (so a shared prefix can be cut per row, see
    :func:`autodeco.decoding.prefill`); None when the base's layers are of a kind :func:`merge`
    cannot handle."""
    cache = DynamicCache(config=config)
    if not cache.layers or any(type(layer) not in MERGEABLE_LAYERS for layer in cache.layers):
        return None
    record_past(cache, True)
    return cache


def mergeable(cache: Cache) -> bool:
    """Whether every layer of ``cache`` is a kind :func:`merge` can pad."""
    return all(type(layer) in MERGEABLE_LAYERS and layer.is_initialized for layer in cache.layers)


def merge(cache: Cache, mask: torch.Tensor, other: Cache, other_mask: torch.Tensor) -> torch.Tensor | None:
    """Append ``other``'s rows to ``cache`` (in place), both left-padded to the longer length;
    returns the merged attention mask, or None (and leaves ``cache`` as it was) when a layer
    cannot be merged. ``mask [B, L]`` and ``other_mask [B', L']`` are the rows' attention masks,
    one column per cached position."""
    if not (mergeable(cache) and mergeable(other)) or len(cache.layers) != len(other.layers):
        return None
    if any(type(a) is not type(b) for a, b in zip(cache.layers, other.layers)):
        return None
    width = max(mask.shape[1], other_mask.shape[1])
    for layer, joining in zip(cache.layers, other.layers):
        stored = width if type(layer) is DynamicLayer else min(width, layer.sliding_window - 1)
        for name in ("keys", "values"):
            merged = torch.cat([pad_left(getattr(layer, name), stored, -2), pad_left(getattr(joining, name), stored, -2)], dim=0)
            setattr(layer, name, merged[..., -stored:, :])
        if type(layer) is DynamicSlidingWindowLayer:
            layer.cumulative_length = width
    return torch.cat([pad_left(mask, width, 1), pad_left(other_mask, width, 1)], dim=0)


def right_aligned(keep: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``keep [B, L]`` (the columns each row keeps), the ``(index, valid)`` pair ``[B, width]``
    that gathers each row's last ``width`` kept columns, right-aligned; ``valid`` is False on the
    padding to their left (whose index is 0)."""
    rows, length = keep.shape
    count = keep.sum(dim=-1, keepdim=True)
    destination = keep.long().cumsum(dim=-1) - 1 + (width - count)  # where each kept column lands
    destination = torch.where(keep & (destination >= 0), destination, width)  # the rest goes to a dump column
    index = keep.new_zeros((rows, width + 1), dtype=torch.long)
    index.scatter_(1, destination, torch.arange(length, device=keep.device).expand(rows, length))
    valid = torch.arange(width, device=keep.device) >= (width - count)
    return index[:, :width], valid


def record_past(cache: Cache, on: bool) -> None:
    """Let sliding-window layers keep every column of the next forward (``on``), so that
    :func:`compact` can give columns back; :func:`compact` trims them to the window again."""
    for layer in cache.layers:
        if type(layer) is DynamicSlidingWindowLayer:
            layer.record_past = on


def compact(cache: Cache, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep only the columns ``keep [B, L]`` marks (one per cached position, like ``mask``) of
    every row, right-aligned and left-padded to the longest row (in place); returns the new
    attention mask. Needs a cache :func:`mergeable` accepts."""
    keep = keep & mask.bool()
    width = int(keep.sum(dim=-1).max())
    index, valid = right_aligned(keep, width)
    for layer in cache.layers:
        stored = layer.keys.shape[-2]  # a sliding layer holds the last columns only
        layer_width = width if type(layer) is DynamicLayer else min(width, layer.sliding_window - 1)
        layer_index, _ = right_aligned(keep[:, -stored:], layer_width)
        for name in ("keys", "values"):
            states = getattr(layer, name)
            setattr(layer, name, states.gather(-2, layer_index[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[-1])))
        if type(layer) is DynamicSlidingWindowLayer:
            layer.cumulative_length = width
    return valid.to(mask.dtype)


def select_rows(cache: Cache, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Keep only ``rows`` of ``cache`` (in place) and drop the columns that are padding in every
    row left; returns the new attention mask."""
    cache.batch_select_indices(rows)
    mask = mask[rows]
    unused = int(mask.any(dim=0).long().argmax()) if mask.numel() else 0  # leading all-padding columns
    if unused and mergeable(cache):
        mask = mask[:, unused:]
        width = mask.shape[1]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[..., -min(width, layer.keys.shape[-2]):, :], layer.values[..., -min(width, layer.values.shape[-2]):, :]
            if type(layer) is DynamicSlidingWindowLayer:
                layer.cumulative_length = width
    return mask
