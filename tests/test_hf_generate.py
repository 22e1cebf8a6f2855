"""transformers' own generate() and pipeline on AutoDecoModelForCausalLM: the learned T and P
enter as a logits processor, and every GenerationConfig field works as for the base or is refused."""

import threading

import pytest
import torch
from test_sampling import P_VALUE_FLOOR, _binned_chi_square
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextIteratorStreamer, TextStreamer, WatermarkingConfig, pipeline,
)

from autodeco import AutoDecoError, AutoDecoModelForCausalLM
from autodeco.configuration import AutoDecoConfig
from autodeco.generation import REFUSED_FIELDS
from autodeco.sampling import top_p_probs
from autodeco.tiny import TINY_ARCHITECTURES

IDS = torch.tensor([[0, 0, 1, 70, 71], [1, 72, 73, 74, 75]])
MASK = (IDS != 0).long()


@torch.no_grad()
def _first_step(model: AutoDecoModelForCausalLM, ids: torch.Tensor = IDS, mask: torch.Tensor = MASK):
    """The prompt's forward: last-position logits, T and P."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    return out.logits[:, -1].float(), out.temperature[:, -1].float(), out.top_p[:, -1].float()


def test_auto_classes_load_a_heads_dir_after_import_autodeco(tmp_path, base_dir):
    AutoDecoModelForCausalLM.from_base(base_dir).save_pretrained(tmp_path / "heads")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "heads"), AutoDecoConfig)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "heads", dtype=torch.float32, device_map="cpu")
    assert isinstance(model, AutoDecoModelForCausalLM) and model.can_generate()
    direct = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads")
    for name, tensor in direct.heads.state_dict().items():
        assert torch.equal(model.heads.state_dict()[name], tensor), name
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["config.json", "model.safetensors"]  # the base is never copied
    assert model.load_tokenizer().get_vocab() == AutoTokenizer.from_pretrained(base_dir).get_vocab()
    with pytest.raises(AutoDecoError, match="device_map='auto' is not supported"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "heads", device_map="auto")


def test_generation_config_holds_the_released_semantics_not_the_bases_sampling_defaults(make_model):
    model = make_model("gemma3_text")
    model.llm.generation_config.update(top_k=64, top_p=0.95, temperature=0.7)
    reloaded = AutoDecoModelForCausalLM(model.llm, model.heads)
    config = reloaded.generation_config
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 1.0, 1.0, 0)
    assert config.eos_token_id == model.llm.generation_config.eos_token_id


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_greedy_is_the_bases_greedy_and_sampling_returns_t_and_p(architecture, make_model):
    model = make_model(architecture)
    ours = model.generate(IDS, attention_mask=MASK, max_new_tokens=5, generation_config=GenerationConfig(do_sample=False))
    assert torch.equal(ours, model.llm.generate(IDS, attention_mask=MASK, max_new_tokens=5, do_sample=False))
    out = model.generate(IDS, attention_mask=MASK, max_new_tokens=4, seed=1, return_dict_in_generate=True, eos_token_id=[])
    assert out.sequences.shape == (2, 9) and out.temperatures.shape == out.top_ps.shape == (2, 4)
    logits, temperature, top_p = _first_step(model)
    torch.testing.assert_close(out.temperatures[:, 0], temperature)
    torch.testing.assert_close(out.top_ps[:, 0], top_p)
    assert torch.equal(out.sequences, model.generate(IDS, attention_mask=MASK, max_new_tokens=4, seed=1, eos_token_id=[]))


def test_scores_are_the_log_of_the_autodeco_distribution_and_logits_the_raw_ones(make_model):
    model = make_model("qwen2")
    for multipliers in ({}, {"temperature": 0.5, "top_p": 0.8}, {"top_k": 5}):
        out = model.generate(IDS, attention_mask=MASK, max_new_tokens=2, seed=0, return_dict_in_generate=True, output_scores=True, output_logits=True, **multipliers)
        logits, temperature, top_p = _first_step(model)
        torch.testing.assert_close(out.logits[0], logits)
        temperature, top_p = temperature * multipliers.get("temperature", 1.0), top_p * multipliers.get("top_p", 1.0)
        expected = top_p_probs(logits, temperature, top_p, top_k=torch.full((2,), multipliers.get("top_k", 0)))
        log_probs = torch.log_softmax(out.scores[0], dim=-1)
        assert torch.equal(log_probs.isfinite(), expected > 0), multipliers  # the same nucleus
        torch.testing.assert_close(log_probs[expected > 0], expected[expected > 0].log(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.temperatures[:, 0], temperature)


def test_hf_sampling_follows_top_p_probs_at_the_learned_t_and_p_chi_square(make_model):
    """20,000 one-token generations of one prompt (rows of one batch) against top_p_probs."""
    model = make_model("llama")
    draws = 20_000
    ids = torch.tensor([[1, 70, 71, 72]])
    out = model.generate(ids.expand(draws, -1), max_new_tokens=1, seed=5, eos_token_id=[], return_dict_in_generate=True)
    logits, temperature, top_p = _first_step(model, ids, torch.ones_like(ids))
    probs = top_p_probs(logits, temperature, top_p)[0]
    assert 1 < int((probs > 0).sum()) < probs.numel()  # a real cut: the test could fail either way
    assert _binned_chi_square(out.sequences[:, -1], probs) > P_VALUE_FLOOR
    torch.testing.assert_close(out.temperatures[:, 0], temperature.expand(draws))


def test_pipeline_streamers_and_several_sequences(make_model, tokenizer):
    model = make_model("llama")
    tokenizer.padding_side = "left"
    prompt = "Question: What is 2 + 3?"
    greedy = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
    new_text = tokenizer.decode(greedy[0, -6:], skip_special_tokens=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    [result] = generator(prompt, max_new_tokens=6, do_sample=False)
    assert result["generated_text"] == prompt + new_text

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, max_new_tokens=6, do_sample=False, streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == new_text
    model.generate(**inputs, max_new_tokens=2, streamer=TextStreamer(tokenizer))  # prints; must not raise

    out = model.generate(IDS, attention_mask=MASK, max_new_tokens=5, num_return_sequences=3, seed=2, eos_token_id=[], return_dict_in_generate=True)
    assert out.sequences.shape == (6, 10) and out.temperatures.shape == (6, 5)
    assert torch.equal(out.sequences[:3, :5], IDS[:1].expand(3, -1)) and len({tuple(r.tolist()) for r in out.sequences[:3]}) > 1


def test_stop_strings_end_rows_and_their_t_and_p(make_model, tokenizer):
    model = make_model("llama")
    inputs = tokenizer(["Once upon a time", "The quick brown"], return_tensors="pt", padding=True, padding_side="left")
    greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    width = inputs["input_ids"].shape[1]
    stop = tokenizer.decode(greedy[0, width + 2 : width + 3])
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, stop_strings=[stop], tokenizer=tokenizer, return_dict_in_generate=True)
    first_row_end = width + 3  # the row stops with the token that completes the stop string
    assert tokenizer.decode(out.sequences[0, :first_row_end]).endswith(stop)
    assert bool((out.sequences[0, first_row_end:] == model.generation_config.pad_token_id).all())
    assert bool((out.temperatures[0, 3:] == 0).all()) and bool((out.temperatures[0, :3] == 0).all())  # greedy: T = 0


def test_penalties_act_on_the_logits_before_the_nucleus(make_model):
    model = make_model("qwen2")
    for extra in ({"repetition_penalty": 3.0}, {"no_repeat_ngram_size": 1}, {"min_new_tokens": 4, "eos_token_id": 2}):
        ours = model.generate(IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False, **extra)
        assert torch.equal(ours, model.llm.generate(IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False, **extra)), extra
    # sampling: the penalised token leaves the nucleus that the raw logits would keep
    logits, _, _ = _first_step(model)
    top = logits.argmax(-1)
    out = model.generate(IDS, attention_mask=MASK, max_new_tokens=1, seed=0, return_dict_in_generate=True, output_scores=True, bad_words_ids=[[int(top[0])]])
    assert out.scores[0][0, top[0]] == -float("inf") and out.scores[0][1].isfinite().any()


def test_bad_inputs_get_clear_errors(make_model):
    model = make_model("llama")
    with pytest.raises(AutoDecoError, match="token_type_ids"):
        model.generate(IDS, attention_mask=MASK, token_type_ids=torch.zeros_like(IDS), max_new_tokens=2)
    with pytest.raises(AutoDecoError, match="num_beams=4: it only applies to beam search"):
        model.generate(IDS, num_beams=4)
    with pytest.raises(AutoDecoError, match="temperature_scale=-1"):
        model.generate(IDS, attention_mask=MASK, temperature=-1.0, max_new_tokens=2)
    with pytest.raises(AutoDecoError, match="right-padded"):
        model.generate(torch.tensor([[1, 5, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
    # left padding without a mask: transformers infers it from the pad id (0 here, not EOS)
    assert torch.equal(
        model.generate(IDS, max_new_tokens=3, do_sample=False), model.generate(IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False)
    )


# ---------------------------------------------------------------------- every GenerationConfig field
# Fields checked as "the same output as the base's generate() with the same value" (greedy, so
# both take the argmax of the same processed logits). A tokenizer is passed where a field needs one.
AS_FOR_THE_BASE = {
    "max_length": 8, "max_new_tokens": 3, "min_length": 9, "min_new_tokens": 5, "max_time": 5.0, "stop_strings": ["e"],
    "repetition_penalty": 3.0, "encoder_repetition_penalty": 3.0, "no_repeat_ngram_size": 1, "encoder_no_repeat_ngram_size": 1,
    "bad_words_ids": [[5]], "sequence_bias": {(5,): 50.0}, "suppress_tokens": [5], "begin_suppress_tokens": [5],
    "forced_bos_token_id": 5, "forced_eos_token_id": 5, "remove_invalid_values": True, "exponential_decay_length_penalty": (1, 5.0),
    "renormalize_logits": True, "token_healing": True, "watermarking_config": WatermarkingConfig(bias=50.0),
    "num_return_sequences": 2, "output_attentions": True, "output_hidden_states": True, "output_scores": True, "output_logits": True,
    "return_dict_in_generate": False, "use_cache": False, "cache_implementation": "static", "max_cache_len": 32, "cache_config": None,
    "compile_config": None, "disable_compile": True, "prefill_chunk_size": 2, "pad_token_id": 3, "bos_token_id": 4, "eos_token_id": 5,
    "prompt_lookup_num_tokens": 2,  # exact speculative decoding: greedy is still the base's greedy
}
# Sampling fields: they change the first step's distribution (scores), as they change the base's.
CHANGE_THE_DISTRIBUTION = {
    "do_sample": False, "temperature": 0.5, "top_p": 0.5, "top_k": 3, "min_p": 0.3, "typical_p": 0.5,
    "epsilon_cutoff": 0.02, "eta_cutoff": 0.9, "top_h": 0.3,
}
NOT_FIELDS = {"_from_model_config", "transformers_version"}


def test_every_generation_config_field_is_categorised():
    fields = set(GenerationConfig().to_dict()) - NOT_FIELDS
    categories = [set(REFUSED_FIELDS), set(AS_FOR_THE_BASE), set(CHANGE_THE_DISTRIBUTION)]
    assert fields == set().union(*categories), "a GenerationConfig field is neither tested nor refused"
    assert sum(len(c) for c in categories) == len(fields)  # none in two


@pytest.mark.parametrize("name", sorted(REFUSED_FIELDS))
def test_refused_fields_raise(name, make_model):
    model = make_model("llama")
    values = {"num_beams": 2, "num_beam_groups": 2, "constraints": [], "force_words_ids": [[5]], "low_memory": True, "early_stopping": True,
              "dola_layers": "high", "decoder_start_token_id": 5, "continuous_batching_config": {}, "is_assistant": True, "use_mtp": True,
              "speculation_type": "dflash", "num_assistant_tokens_schedule": "heuristic", "assistant_early_exit": 1, "max_matching_ngram_size": 3,
              "num_assistant_tokens": 3, "assistant_lookbehind": 3, "target_lookbehind": 3}
    value = values.get(name, 0.5)
    with pytest.raises(AutoDecoError, match=name):
        model.generate(IDS, attention_mask=MASK, max_new_tokens=2, **{name: value})


@pytest.mark.parametrize("name", sorted(AS_FOR_THE_BASE))
def test_fields_work_as_for_the_base(name, make_model, tokenizer):
    model = make_model("llama")
    extra = {name: AS_FOR_THE_BASE[name], "tokenizer": tokenizer} if name in ("stop_strings", "token_healing") else {name: AS_FOR_THE_BASE[name]}
    common = dict(attention_mask=MASK, do_sample=False, **({} if name in ("max_length", "max_new_tokens") else {"max_new_tokens": 6}))
    return_dict = {"return_dict_in_generate": True} if name != "return_dict_in_generate" else {}
    ids, common["attention_mask"] = (IDS[1:], MASK[1:]) if name == "prompt_lookup_num_tokens" else (IDS, MASK)  # the base's takes one row
    try:
        base = model.llm.generate(ids, **common, **return_dict, **extra)
    except ValueError as refusal:  # so must ours, then
        with pytest.raises((ValueError, AutoDecoError)):
            model.generate(ids, **common, **return_dict, **extra)
        assert name == "num_return_sequences", refusal  # greedy gives one sequence per row (sampling: test_pipeline_...)
        return
    ours = model.generate(ids, **common, **return_dict, **extra)
    if name == "return_dict_in_generate":
        assert torch.equal(ours, base)
        return
    assert torch.equal(ours.sequences, base.sequences)
    if name == "prompt_lookup_num_tokens":
        return  # autodeco's engine: sequences, T and P only
    assert set(base.keys()) <= set(ours.keys())
    for key in ("logits", "attentions", "hidden_states"):
        assert (ours.get(key) is None) == (base.get(key) is None), key
    if "logits" in base.keys():
        torch.testing.assert_close(ours.logits, base.logits)


@pytest.mark.parametrize("name", sorted(CHANGE_THE_DISTRIBUTION))
def test_sampling_fields_change_the_distribution(name, make_model):
    model = make_model("llama")
    with torch.no_grad():
        model.llm.lm_head.weight.mul_(6)  # a peaked distribution, for the cuts relative to its top token to cut

    def first_scores(generate, **extra):
        options = dict(attention_mask=MASK, max_new_tokens=1, do_sample=True, return_dict_in_generate=True, output_scores=True)
        out = generate(IDS, **{**options, **extra})
        return torch.log_softmax(out.scores[0], dim=-1)

    change = {name: CHANGE_THE_DISTRIBUTION[name]}
    assert not torch.equal(first_scores(model.generate, **change), first_scores(model.generate))
    assert not torch.equal(first_scores(model.llm.generate, **change), first_scores(model.llm.generate))  # so it does for the base
