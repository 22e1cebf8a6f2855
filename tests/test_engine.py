"""The generation engine: batching, padding, caching, seeds, stops, streaming and traces."""

import pytest
import torch

from autodeco import AutoDecoError, SamplingParams, generate, stream
from autodeco.decoding import decode_to_tensors
from autodeco.kv_cache import left_pad, positions_from_mask

PROMPTS = ["Question: What is 2 + 3? Answer:", "Once", "A journey of a thousand miles begins"]


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma3_text"])
def test_batched_greedy_equals_unbatched_greedy(architecture, make_model, tokenizer):
    model = make_model(architecture)
    params = SamplingParams(decoding="greedy", max_new_tokens=10)
    batched = generate(model, tokenizer, PROMPTS, params)
    for prompt, completion in zip(PROMPTS, batched):
        alone = generate(model, tokenizer, prompt, params)[0]
        assert completion.token_ids == alone.token_ids


def test_left_padding_does_not_change_logits_or_heads(make_model):
    model = make_model("qwen2")
    short, long = [1, 40, 41], [1, 50, 51, 52, 53, 54, 55]
    ids, mask = left_pad([short, long], pad_token_id=0)
    padded = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    alone = model(input_ids=torch.tensor([short]))
    torch.testing.assert_close(padded.logits[0, -3:], alone.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded.temperature[0, -3:], alone.temperature[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.top_p[0, -3:], alone.top_p[0], atol=1e-5, rtol=1e-5)


def test_same_seed_same_text_whatever_the_batch(make_model, tokenizer):
    model = make_model("llama")
    seeded = SamplingParams(max_new_tokens=16, seed=42)
    first = generate(model, tokenizer, PROMPTS[0], seeded)[0]
    again = generate(model, tokenizer, PROMPTS[0], seeded)[0]
    in_batch = generate(model, tokenizer, [PROMPTS[1], PROMPTS[0]], [SamplingParams(max_new_tokens=5), seeded])[1]
    other_seed = generate(model, tokenizer, PROMPTS[0], SamplingParams(max_new_tokens=16, seed=43))[0]
    assert first.token_ids == again.token_ids == in_batch.token_ids
    assert first.token_ids != other_seed.token_ids


def test_traces_report_the_temperature_and_top_p_the_model_predicted(make_model, tokenizer):
    model = make_model("llama")
    completion = generate(model, tokenizer, PROMPTS[0], SamplingParams(max_new_tokens=8, seed=1, temperature_scale=0.5, top_p_scale=1.2))[0]
    prompt_ids = tokenizer(PROMPTS[0]).input_ids
    full = model(input_ids=torch.tensor([prompt_ids + completion.token_ids]))
    positions = slice(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(completion.token_ids))
    expected_t = full.temperature[0, positions] * 0.5
    expected_p = (full.top_p[0, positions] * 1.2).clamp(max=1.0)
    torch.testing.assert_close(torch.tensor(completion.temperatures), expected_t, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(completion.top_ps), expected_p, atol=1e-5, rtol=1e-4)


def test_static_and_greedy_traces_report_the_constants(make_model, tokenizer):
    model = make_model("llama")
    static, greedy = generate(
        model, tokenizer, PROMPTS[:2],
        [SamplingParams(decoding="static", temperature=0.7, top_p=0.9, max_new_tokens=4), SamplingParams(decoding="greedy", max_new_tokens=4)],
    )
    assert all(abs(t - 0.7) < 1e-6 for t in static.temperatures) and all(abs(p - 0.9) < 1e-6 for p in static.top_ps)
    assert all(t == 0.0 for t in greedy.temperatures)


def test_ragged_stopping_eos_and_per_request_lengths(make_model, tokenizer):
    model = make_model("llama")
    short, long = SamplingParams(decoding="greedy", max_new_tokens=6), SamplingParams(decoding="greedy", max_new_tokens=9)
    reference, other = generate(model, tokenizer, PROMPTS[:2], [short, long])
    assert (reference.finish_reason, len(reference.token_ids)) == ("length", 6)
    assert other.finish_reason == "stop" or len(other.token_ids) == 9  # its own budget, not the other row's
    eos_token = reference.token_ids[2]
    model.llm.generation_config.eos_token_id = eos_token  # the third greedy token now ends the answer
    stopped, ragged = generate(model, tokenizer, PROMPTS[:2], [short, long])
    assert stopped.finish_reason == "stop" and stopped.token_ids == reference.token_ids[:2]
    assert stopped.stop_token_id == eos_token  # the token that ended it is reported, not kept
    assert reference.stop_token_id is None
    expected = other.token_ids[: other.token_ids.index(eos_token)] if eos_token in other.token_ids else other.token_ids
    assert ragged.token_ids == expected  # the other row runs on, unaffected


def test_stop_strings_end_the_answer_and_are_never_streamed(make_model, tokenizer):
    model = make_model("llama")
    greedy = SamplingParams(decoding="greedy", max_new_tokens=20)
    full_text = generate(model, tokenizer, PROMPTS[2], greedy)[0].text
    assert len(full_text) > 6
    stop = full_text[3:6]
    params = SamplingParams(decoding="greedy", max_new_tokens=20, stop=(stop,))
    completion = generate(model, tokenizer, PROMPTS[2], params)[0]
    assert completion.finish_reason == "stop"
    assert completion.text == full_text[: full_text.index(stop)]
    events = list(stream(model, tokenizer, PROMPTS[2], params))
    streamed = "".join(e.text for e in events)
    assert streamed == completion.text and stop not in streamed
    assert events[-1].finish_reason == "stop" and all(e.finish_reason is None for e in events[:-1])


def test_a_token_wholly_inside_a_stop_string_is_reported_as_the_stop_token(make_model, tokenizer):
    model = make_model("llama")
    reference = generate(model, tokenizer, PROMPTS[2], SamplingParams(decoding="greedy", max_new_tokens=8))[0]
    # the first token whose text is new: made the stop string, it ends the answer and is not part of it
    index = next(i for i, t in enumerate(reference.tokens) if i and t.text and t.text not in "".join(x.text for x in reference.tokens[:i]))
    ender = reference.tokens[index]
    stopped = generate(model, tokenizer, PROMPTS[2], SamplingParams(decoding="greedy", max_new_tokens=8, stop=(ender.text,)))[0]
    assert stopped.token_ids == reference.token_ids[:index] and stopped.stop_token_id == ender.token_id


def test_stream_concatenates_to_generate(make_model, tokenizer):
    model = make_model("qwen3_moe")
    params = SamplingParams(max_new_tokens=12, seed=5)
    completions = generate(model, tokenizer, PROMPTS, params)
    texts, tokens = [""] * 3, [[] for _ in range(3)]
    for event in stream(model, tokenizer, PROMPTS, params):
        texts[event.index] += event.text
        tokens[event.index] += [t.token_id for t in event.tokens]
    assert texts == [c.text for c in completions] and tokens == [c.token_ids for c in completions]


def test_chat_template_is_applied(make_model, tokenizer):
    model = make_model("llama")
    plain = generate(model, tokenizer, "hello", SamplingParams(max_new_tokens=2, seed=0))[0]
    chat = generate(model, tokenizer, "hello", SamplingParams(max_new_tokens=2, seed=0), chat=True)[0]
    messages = generate(model, tokenizer, [[{"role": "user", "content": "hello"}]], SamplingParams(max_new_tokens=2, seed=0))[0]
    expected = len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids)
    assert chat.prompt_tokens == messages.prompt_tokens == expected != plain.prompt_tokens
    assert chat.token_ids == messages.token_ids


def test_context_limit(make_model, tokenizer):
    model = make_model("llama")  # 256 positions
    with pytest.raises(AutoDecoError, match="context is 256 positions"):
        generate(model, tokenizer, "x" * 600, SamplingParams(max_new_tokens=4))
    near_limit = [1] + [40] * 250
    sequences, _, _ = decode_to_tensors(model, torch.tensor([near_limit]), None, SamplingParams(max_new_tokens=50, decoding="greedy"), set(), 0)
    assert sequences.shape[1] == 256  # stopped by the context, not by max_new_tokens


def test_bad_prompts_and_bad_logits(make_model, tokenizer):
    model = make_model("llama")
    with pytest.raises(AutoDecoError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["fine", "  "])
    with pytest.raises(AutoDecoError, match="2 sampling params for 3 prompts"):
        generate(model, tokenizer, PROMPTS, [SamplingParams(), SamplingParams()])
    with pytest.raises(AutoDecoError, match="no chat template"):
        saved, tokenizer.chat_template = tokenizer.chat_template, None
        try:
            generate(model, tokenizer, "hi", chat=True)
        finally:
            tokenizer.chat_template = saved
    with torch.no_grad():
        model.llm.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(AutoDecoError, match="logits are NaN or infinite"):
        generate(model, tokenizer, "hello", SamplingParams(max_new_tokens=3))


def test_static_and_greedy_batches_do_not_pay_for_the_heads(make_model, tokenizer, monkeypatch):
    model = make_model("llama")
    calls = []
    original = model.heads.forward
    monkeypatch.setattr(model.heads, "forward", lambda *args: calls.append(1) or original(*args))
    baselines = [SamplingParams(decoding="static", temperature=0.8, max_new_tokens=3), SamplingParams(decoding="greedy", max_new_tokens=3)]
    generate(model, tokenizer, PROMPTS[:2], baselines)
    assert calls == []
    generate(model, tokenizer, PROMPTS[:2], [baselines[0], SamplingParams(max_new_tokens=3)])
    assert calls  # one AutoDeco row: the heads run for the batch


def test_incremental_detokenisation_matches_a_full_decode(tokenizer):
    from autodeco.engine import RowText

    text = "Héllo wörld 😀 ok\n  spaces  and 日本語 text. Answer: 42"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    row, pieces = RowText(tokenizer, (), set()), []
    for token in ids:
        row.add(token)
        pieces.append(row.last_piece)
        assert "\ufffd" not in row.decoded  # a split character waits for the token that completes it
    assert row.decoded == tokenizer.decode(ids, skip_special_tokens=True) == "".join(pieces)


def test_sampling_reuses_the_heads_softmax_and_draws_the_same_tokens(make_model, tokenizer, monkeypatch):
    from autodeco import sampling as sampling_module
    from autodeco.decoding import StepUniforms, prefill, sample_step
    from autodeco.sampling import BatchedSampling

    model = make_model("llama")
    out, _ = prefill(model, [tokenizer(p).input_ids for p in PROMPTS])
    uniforms = StepUniforms(torch.arange(len(PROMPTS)) * 7919)
    assert out.probs is not None
    rows_computed = []
    original = sampling_module._softmax_weights
    monkeypatch.setattr(sampling_module, "_softmax_weights", lambda logits, t: rows_computed.append(logits.shape[0]) or original(logits, t))
    for step in range(20):
        for params in ([SamplingParams()] * 3, [SamplingParams(), SamplingParams(temperature_scale=0.9), SamplingParams()]):
            sampling = BatchedSampling.from_params(params)
            shared = sample_step(out.__class__(**{**out, "probs": out.probs.clone()}), sampling, uniforms.take([step] * 3, 1)[:, 0])
            assert rows_computed == ([] if params[1].temperature_scale == 1.0 else [1])  # only the scaled row
            recomputed = sample_step(out.__class__(**{**out, "probs": None}), sampling, uniforms.take([step] * 3, 1)[:, 0])
            assert rows_computed[-1] == 3 and torch.equal(shared[0], recomputed[0])
            rows_computed.clear()
