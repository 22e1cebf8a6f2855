"""Prefix sharing: rows with the same prompt prefill it once, prompts with a common prefix compute
it once, and every seeded row gives the tokens it gives without sharing."""

import pytest
import torch

from autodeco import SamplingParams, kv_cache
from autodeco.decoding import MIN_SHARED_PREFIX, RowRequest, RunningBatch, common_prefix_length, prefill
from autodeco.tiny import TINY_ARCHITECTURES

PREFIX = [1] + [20 + (7 * i) % 90 for i in range(MIN_SHARED_PREFIX + 8)]  # past the 16-token sliding windows
TAILS = [[101], [102, 103, 104, 105, 106], [107 + i for i in range(12)]]  # rows keep different numbers of prefix columns
PROMPTS = [PREFIX + tail for tail in TAILS] + [PREFIX + TAILS[1]] * 2 + [PREFIX + [110] * 20]  # repeats; the longest row sets the block
PARAMS = [
    SamplingParams(decoding="greedy", max_new_tokens=12),
    SamplingParams(seed=5, max_new_tokens=10, temperature_scale=0.7, top_p_scale=1.3),
    SamplingParams(decoding="static", temperature=0.8, top_p=0.9, seed=9, max_new_tokens=11),
    SamplingParams(seed=5, max_new_tokens=10, temperature_scale=0.7, top_p_scale=1.3),  # the same prompt and seed as row 1
    SamplingParams(seed=6, max_new_tokens=10),
    SamplingParams(seed=7, max_new_tokens=9),
]


def _decode(model, prompts, params, share: bool) -> dict[int, list[tuple[int, float, float]]]:
    batch = RunningBatch(model, eos_token_ids=set(), share_prefixes=share)
    got: dict[int, list[tuple[int, float, float]]] = {i: [] for i in range(len(prompts))}
    for event in batch.run([RowRequest(i, p, q) for i, (p, q) in enumerate(zip(prompts, params))]):
        got[event.key].append((event.token, event.temperature, event.top_p))
    return got


def _fed_tokens(model) -> list[int]:
    """Tokens in each forward of the base from now on (batch x length)."""
    fed: list[int] = []
    model.llm.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True)
    return fed


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_shared_prefills_give_every_row_its_unshared_tokens(architecture, make_model):
    model = make_model(architecture)
    assert common_prefix_length(PROMPTS) == len(PREFIX)
    shared, alone = _decode(model, PROMPTS, PARAMS, share=True), _decode(model, PROMPTS, PARAMS, share=False)
    for row in range(len(PROMPTS)):
        assert [t for t, _, _ in shared[row]] == [t for t, _, _ in alone[row]], f"row {row}"
        torch.testing.assert_close(torch.tensor([(t, p) for _, t, p in shared[row]]), torch.tensor([(t, p) for _, t, p in alone[row]]), atol=1e-4, rtol=1e-4)
    assert [t for t, _, _ in shared[3]] == [t for t, _, _ in shared[1]]  # the same prompt and seed: the same answer


def test_rows_with_one_prompt_prefill_it_once(make_model):
    model = make_model("llama")
    fed = _fed_tokens(model)
    RunningBatch(model, set()).join([RowRequest(i, PROMPTS[1], SamplingParams(seed=i)) for i in range(8)])
    assert fed == [len(PROMPTS[1])]


def test_a_common_prefix_is_computed_once_and_the_rest_fed_right_aligned(make_model):
    model = make_model("gemma3_text")
    prompts = [PREFIX + tail for tail in TAILS]
    fed = _fed_tokens(model)
    RunningBatch(model, set()).join([RowRequest(i, p, SamplingParams(seed=i)) for i, p in enumerate(prompts)])
    rest = len(PREFIX) + len(TAILS[2]) - common_prefix_length(prompts)  # the longest row's rest sets the block
    assert common_prefix_length(prompts) == len(PREFIX) and fed == [len(PREFIX), len(prompts) * rest]


def test_a_short_common_prefix_is_not_shared(make_model):
    model = make_model("llama")
    prompts = [PREFIX[: MIN_SHARED_PREFIX - 1] + [101], PREFIX[: MIN_SHARED_PREFIX - 1] + [102, 103]]
    fed = _fed_tokens(model)
    prefill(model, prompts)
    assert fed == [2 * (MIN_SHARED_PREFIX + 1)]


def test_caches_whose_layers_cannot_be_cut_prefill_every_prompt_whole(make_model, monkeypatch):
    model = make_model("llama")
    monkeypatch.setattr(kv_cache, "recording_cache", lambda config: None)
    prompts = [PREFIX + tail for tail in TAILS]
    fed = _fed_tokens(model)
    out, mask = prefill(model, prompts)
    assert fed == [len(prompts) * max(len(p) for p in prompts)] and mask.sum(dim=-1).tolist() == [len(p) for p in prompts]
    shared, _ = prefill(make_model("llama"), prompts)
    torch.testing.assert_close(out.logits, shared.logits, atol=1e-4, rtol=1e-4)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5], [6]]) == 0 and common_prefix_length([[1, 2], [1, 2]]) == 2
