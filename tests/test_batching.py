"""Continuous batching: rows that join and leave a running batch decode as they would alone."""

import pytest
import torch

from autodeco import SamplingParams, kv_cache
from autodeco.decoding import RowRequest, RunningBatch
from autodeco.tiny import TINY_ARCHITECTURES

PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51], [1, 60, 61, 62, 63, 64, 65, 66]]
JOIN_AT = {1: 3, 2: 7}  # row -> the step of row 0 at which it joins


def _alone(model, prompt: list[int], params: SamplingParams) -> list[int]:
    return [event.token for event in RunningBatch(model, eos_token_ids=set()).run([RowRequest(0, prompt, params)])]


def _run_staggered(model, params: list[SamplingParams], leave: dict[int, int] | None = None) -> dict[int, list[int]]:
    """Row 0 starts alone; the others join later; ``leave`` maps a row to the step it is dropped."""
    batch = RunningBatch(model, eos_token_ids=set())
    tokens: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    events = batch.join([RowRequest(0, PROMPTS[0], params[0])])
    for step in range(1, 64):
        for event in events:
            tokens[event.key].append(event.token)
        if not len(batch) and step > max(JOIN_AT.values()):
            break
        events = batch.advance()
        joining = [RowRequest(i, PROMPTS[i], params[i]) for i, at in JOIN_AT.items() if at == step]
        events += batch.join(joining)
        batch.leave({i for i, at in (leave or {}).items() if at == step})
    return tokens


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_rows_joining_a_running_batch_decode_as_they_would_alone(architecture, make_model):
    """Past the 16-token sliding window of the Gemma 3 and GPT-OSS configs too."""
    model = make_model(architecture)
    params = [SamplingParams(seed=11 * i, max_new_tokens=20 + 4 * i) for i in range(len(PROMPTS))]
    got = _run_staggered(model, params)
    for i, prompt in enumerate(PROMPTS):
        assert got[i] == _alone(model, prompt, params[i]), f"row {i}"


def test_a_row_that_leaves_stops_and_the_others_go_on(make_model):
    model = make_model("gemma3_text")
    params = [SamplingParams(seed=i, max_new_tokens=24) for i in range(len(PROMPTS))]
    got = _run_staggered(model, params, leave={1: 9})
    assert got[1] == _alone(model, PROMPTS[1], params[1])[: 9 - JOIN_AT[1] + 1]
    for i in (0, 2):
        assert got[i] == _alone(model, PROMPTS[i], params[i])


def test_caches_that_cannot_be_merged_are_rebuilt(make_model, monkeypatch):
    model = make_model("llama")
    monkeypatch.setattr(kv_cache, "merge", lambda *args: None)
    params = [SamplingParams(decoding="greedy", max_new_tokens=16) for _ in PROMPTS]
    got = _run_staggered(model, params)
    for i, prompt in enumerate(PROMPTS):
        assert got[i] == _alone(model, prompt, params[i]), f"row {i}"


def test_rows_end_on_eos_and_budget_and_report_logprobs(make_model):
    model = make_model("qwen2")
    first = _alone(model, PROMPTS[0], SamplingParams(decoding="greedy", max_new_tokens=6))
    batch = RunningBatch(model, eos_token_ids={first[2]})  # the third greedy token (or its first occurrence) ends row 0
    events = batch.join([
        RowRequest("eos", PROMPTS[0], SamplingParams(decoding="greedy", max_new_tokens=6), logprobs=3),
        RowRequest("budget", PROMPTS[1], SamplingParams(seed=1, max_new_tokens=2)),
    ])
    seen = list(events)
    while len(batch):
        seen += batch.advance()
    by_key = {key: [e for e in seen if e.key == key] for key in ("eos", "budget")}
    assert [e.token for e in by_key["eos"]] == first[: first.index(first[2]) + 1] and by_key["eos"][-1].finish_reason == "stop"
    assert len(by_key["budget"]) == 2 and by_key["budget"][-1].finish_reason == "length"
    for event in by_key["eos"]:  # greedy: the token is the most likely one
        assert len(event.top_logprobs) == 3 and event.top_logprobs[0] == (event.token, pytest.approx(event.logprob))
        assert sum(torch.tensor([lp for _, lp in event.top_logprobs]).exp()) <= 1.0
    assert all(e.logprob is None for e in by_key["budget"])
