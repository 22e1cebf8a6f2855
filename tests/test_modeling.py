"""The model class: heads on every architecture, released checkpoint formats, bad checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from autodeco import AutoDecoError, AutoDecoModelForCausalLM
from autodeco.heads import AutoDecoHeads, SoftmaxOut, probability_statistics
from autodeco.decoding import decode_to_tensors
from autodeco.sampling import CANDIDATES, SamplingParams
from autodeco.tiny import TINY_ARCHITECTURES, tiny_model


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_heads_attach_and_decode_on_every_architecture(architecture, make_model):
    model = make_model(architecture)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44], [0, 0, 1, 50, 51, 52]])
    mask = (ids != 0).long()
    out = model(input_ids=ids, attention_mask=mask)
    vocab = model.config.vocab_size
    assert out.logits.shape == (2, 6, vocab) and out.temperature.shape == (2, 6) and out.top_p.shape == (2, 6)
    assert torch.all((out.temperature > 0) & (out.temperature < 2)) and torch.all((out.top_p > 0) & (out.top_p < 1))
    # the heads read exactly the tensor the base feeds its LM head: hidden_states[-1]
    reference = model.llm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(out.logits, reference.logits)
    expected_t, expected_p = model.heads(reference.hidden_states[-1], reference.logits)
    torch.testing.assert_close(out.temperature, expected_t)
    torch.testing.assert_close(out.top_p, expected_p)
    sequences = model.generate(ids[:1], max_new_tokens=4, seed=0, eos_token_id=[])
    assert sequences.shape == (1, 10) and torch.equal(sequences[:, :6], ids[:1])


@pytest.mark.parametrize("architecture", ["llama", "gpt_oss", "deepseek_v3", "gpt2"])
def test_cached_decoding_equals_full_recomputation(architecture, make_model):
    model = make_model(architecture)
    ids = torch.tensor([[1, 60, 61, 62, 63, 64, 65, 66]])
    full = model(input_ids=ids)
    step = model(input_ids=ids[:, :5], use_cache=True)
    temperatures, top_ps, logits = [step.temperature[:, -1]], [step.top_p[:, -1]], [step.logits[:, -1]]
    cache = step.cache
    for position in range(5, 8):
        step = model(input_ids=ids[:, position:position + 1], past_key_values=cache, use_cache=True)
        cache = step.cache
        temperatures.append(step.temperature[:, -1])
        top_ps.append(step.top_p[:, -1])
        logits.append(step.logits[:, -1])
    torch.testing.assert_close(torch.stack(logits, 1), full.logits[:, 4:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(temperatures, 1), full.temperature[:, 4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(top_ps, 1), full.top_p[:, 4:], atol=1e-5, rtol=1e-5)


def _released_heads_dir(path, base_config, hidden, seed=0):
    """A heads dir written by hand: 8 tensors with the released names, config as released."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "temp_head.mlp.0.weight": torch.randn(256, hidden, generator=g) * 0.1,
        "temp_head.mlp.0.bias": torch.randn(256, generator=g) * 0.1,
        "temp_head.mlp.2.weight": torch.randn(1, 256, generator=g) * 0.1,
        "temp_head.mlp.2.bias": torch.randn(1, generator=g) * 0.1,
        "top_p_head.mlp.0.weight": torch.randn(256, hidden + 5, generator=g) * 0.1,
        "top_p_head.mlp.0.bias": torch.randn(256, generator=g) * 0.1,
        "top_p_head.mlp.2.weight": torch.randn(1, 256, generator=g) * 0.1,
        "top_p_head.mlp.2.bias": torch.randn(1, generator=g) * 0.1,
    }
    path.mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {
        **base_config.to_dict(), "model_type": "autodeco", "architectures": ["AutoDecoModelForCausalLM"],
        "base_model_name_or_path": "/nowhere/base", "base_model_type": base_config.model_type,
        "enable_temperature_head": True, "enable_top_p_head": True, "use_enhanced_features": True,
    }
    (path / "config.json").write_text(json.dumps(config))
    return {k: v.to(torch.bfloat16).float() for k, v in tensors.items()}


def test_hand_written_released_heads_load_and_match_a_direct_reference(tmp_path):
    base = tiny_model("qwen2")
    tensors = _released_heads_dir(tmp_path / "heads", base.config, hidden=64)
    model = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads", base=base)
    ids = torch.tensor([[1, 30, 31, 32, 33]])
    out = model(input_ids=ids)
    hidden = base(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    logits = out.logits
    # reference written from the spec, straight from the 8 tensors
    h1 = F.relu(F.linear(hidden, tensors["temp_head.mlp.0.weight"], tensors["temp_head.mlp.0.bias"]))
    t_ref = 2 * torch.sigmoid(F.linear(h1, tensors["temp_head.mlp.2.weight"], tensors["temp_head.mlp.2.bias"]))
    q = torch.softmax(logits / (t_ref + 1e-8), dim=-1)
    features = torch.cat([
        hidden, t_ref, q.max(-1, keepdim=True).values, -(q * torch.log(q + 1e-8)).sum(-1, keepdim=True),
        q.var(-1, keepdim=True), q.topk(5, dim=-1).values.sum(-1, keepdim=True),
    ], dim=-1)
    h2 = F.relu(F.linear(features, tensors["top_p_head.mlp.0.weight"], tensors["top_p_head.mlp.0.bias"]))
    p_ref = torch.sigmoid(F.linear(h2, tensors["top_p_head.mlp.2.weight"], tensors["top_p_head.mlp.2.bias"]))
    torch.testing.assert_close(out.temperature, t_ref.squeeze(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.top_p, p_ref.squeeze(-1), atol=1e-6, rtol=1e-5)


def test_probability_statistics_formula():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 0.25, -3.0]])
    temperature = torch.tensor([0.5])
    q = torch.softmax(logits / 0.5, dim=-1)[0].double()
    mean = q.mean()
    expected = [q.max(), -(q * torch.log(q + 1e-8)).sum(), ((q - mean) ** 2).sum() / (q.numel() - 1), q.sort(descending=True).values[:5].sum()]
    torch.testing.assert_close(probability_statistics(logits, temperature)[0].double(), torch.stack(expected), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probability_statistics_at_a_262k_vocabulary_match_the_released_formula_in_float64(dtype):
    """Rows from peaked to flat, with -inf logits; the entropy may differ from the released
    formula by its 1e-8 guard only (at most V * 1e-8), the rest by float32 rounding. The softmax
    and the top ids the statistics hand to decoding are checked too."""
    vocab = 262_144
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, vocab, generator=generator) * torch.tensor([[8.0], [4.0], [1.0], [0.1]])).to(dtype)
    logits[1, ::7] = float("-inf")
    temperature = torch.tensor([0.05, 0.7, 1.3, 1.9])
    original = logits.clone()
    out = SoftmaxOut(torch.empty(4, vocab), torch.empty(4, CANDIDATES, dtype=torch.long))
    stats = probability_statistics(logits, temperature, out).double()
    assert torch.equal(logits, original)  # the logits are left as they were
    q = torch.softmax(logits.double() / (temperature.double().unsqueeze(-1) + 1e-8), dim=-1)
    entropy = -(q * torch.log(q + 1e-8)).sum(dim=-1)
    torch.testing.assert_close(stats[:, 1], entropy, atol=vocab * 1e-8, rtol=0)
    torch.testing.assert_close(stats[:, [0, 3]], torch.stack([q.max(dim=-1).values, q.topk(5).values.sum(dim=-1)], dim=-1), rtol=2e-5, atol=0)
    # var = mean(q^2) - mean(q)^2 cancels in float32 for the flat row (var 4e-14): an absolute bound
    torch.testing.assert_close(stats[:, 2], q.var(dim=-1), rtol=2e-5, atol=1e-16)
    torch.testing.assert_close(out.probs.double() / out.probs.sum(dim=-1, keepdim=True), q, rtol=1e-4, atol=1e-12)
    assert torch.equal(q.gather(-1, out.top_ids), q.topk(CANDIDATES).values)


def test_top_p_head_sees_a_detached_temperature_and_flags_shape_it():
    heads = AutoDecoHeads(16)
    hidden, logits = torch.randn(3, 16), torch.randn(3, 40)
    t, p = heads(hidden, logits)
    p.sum().backward()
    assert all(param.grad is None for param in heads.temp_head.parameters())
    assert heads.top_p_head.mlp[0].weight.grad is not None
    assert AutoDecoHeads(16, use_enhanced_features=False).top_p_head.mlp[0].in_features == 17
    t, p = AutoDecoHeads(16, enable_temperature_head=False, enable_top_p_head=False)(hidden, logits)
    assert torch.all(t == 1) and torch.all(p == 1)


def test_heads_only_round_trip_is_exact(tmp_path, base_dir):
    model = AutoDecoModelForCausalLM.from_base(base_dir, use_enhanced_features=False)
    model.save_pretrained(tmp_path / "heads")
    saved = load_file(tmp_path / "heads" / "model.safetensors")
    assert sorted(saved) == sorted(model.heads.state_dict())
    assert len(saved) == 8 and saved["top_p_head.mlp.0.weight"].shape == (256, 65)
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["model_type"] == "autodeco" and config["base_model_type"] == "llama"
    assert config["base_model_name_or_path"] == str(base_dir) and config["use_enhanced_features"] is False
    loaded = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads")  # base found from the config
    for key, value in model.heads.state_dict().items():
        assert torch.equal(loaded.heads.state_dict()[key], value)
    ids = torch.tensor([[1, 20, 21]])
    a, b = model(input_ids=ids), loaded(input_ids=ids)
    assert torch.equal(a.temperature, b.temperature) and torch.equal(a.top_p, b.top_p) and torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("shard_size", ["5GB", "200KB"])
def test_merged_round_trip_is_exact(tmp_path, make_model, shard_size):
    model = make_model("gemma3_text")  # tied embeddings
    model.save_merged(tmp_path / "merged", max_shard_size=shard_size)
    files = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert (len(files) > 1) == (shard_size == "200KB")
    names = set()
    for file in files:
        names |= set(load_file(tmp_path / "merged" / file))
    assert {n for n in names if not n.startswith("llm.")} == set(model.heads.state_dict())
    loaded = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "merged")
    for key, value in model.llm.state_dict().items():
        assert torch.equal(loaded.llm.state_dict()[key], value), key
    for key, value in model.heads.state_dict().items():
        assert torch.equal(loaded.heads.state_dict()[key], value), key
    ids = torch.tensor([[1, 20, 21, 22]])
    a, b = model(input_ids=ids), loaded(input_ids=ids)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.temperature, b.temperature) and torch.equal(a.top_p, b.top_p)


def test_heads_for_another_hidden_size_are_refused_with_both_sizes(tmp_path):
    base = tiny_model("llama")
    _released_heads_dir(tmp_path / "heads", base.config, hidden=96)
    with pytest.raises(AutoDecoError, match="heads expect hidden size 96 but the base has hidden size 64"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads", base=base)
    with pytest.raises(AutoDecoError, match="hidden size 96 but the base has hidden size 64"):
        AutoDecoModelForCausalLM(base, AutoDecoHeads(96))


def test_head_shapes_must_agree_with_each_other(tmp_path):
    base = tiny_model("llama")
    _released_heads_dir(tmp_path / "heads", base.config, hidden=64)
    tensors = load_file(tmp_path / "heads" / "model.safetensors")
    tensors["top_p_head.mlp.0.weight"] = tensors["top_p_head.mlp.0.weight"][:, :65].contiguous()  # no statistics
    save_file(tensors, str(tmp_path / "heads" / "model.safetensors"))
    with pytest.raises(AutoDecoError, match=r"top_p_head.mlp.0.weight has shape \[256, 65\].*needs \[256, 69\]; check use_enhanced_features"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads", base=base)


def test_missing_and_extra_head_tensors_are_named(tmp_path):
    base = tiny_model("llama")
    _released_heads_dir(tmp_path / "heads", base.config, hidden=64)
    tensors = load_file(tmp_path / "heads" / "model.safetensors")
    del tensors["top_p_head.mlp.2.bias"]
    tensors["temp_head.mlp.4.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "heads" / "model.safetensors"))
    with pytest.raises(AutoDecoError, match=r"missing \['top_p_head.mlp.2.bias'\]; unexpected \['temp_head.mlp.4.weight'\]"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads", base=base)


def test_bad_checkpoint_dirs_and_bases_give_clear_errors(tmp_path, base_dir):
    with pytest.raises(AutoDecoError, match="does not exist"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "absent")
    with pytest.raises(AutoDecoError, match="model_type 'llama', not 'autodeco'"):
        AutoDecoModelForCausalLM.from_pretrained(base_dir)
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "config.json").write_text(json.dumps({"model_type": "autodeco", "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(AutoDecoError, match="model.safetensors is missing"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads")
    AutoDecoModelForCausalLM.from_base(base_dir).heads.state_dict()
    save_file(AutoDecoModelForCausalLM.from_base(base_dir).heads.state_dict(), str(tmp_path / "heads" / "model.safetensors"))
    with pytest.raises(AutoDecoError, match=f"looked in the local folder {tmp_path / 'gone'} \\(does not exist\\)"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads")
    with pytest.raises(AutoDecoError, match="looked in the local folder"):
        AutoDecoModelForCausalLM.from_base(tmp_path / "also-missing")


def test_hugging_face_style_generate(make_model):
    model = make_model("qwen2")
    ids = torch.tensor([[0, 0, 1, 70, 71], [1, 72, 73, 74, 75]])
    mask = (ids != 0).long()
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    logits = model(input_ids=greedy[1:], attention_mask=torch.ones_like(greedy[1:])).logits
    assert torch.equal(greedy[1, 5:], logits[0, 4:-1].argmax(-1))  # each new token is the argmax after its prefix
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, seed=7, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 11) and out.temperatures.shape == (2, 6) and out.top_ps.shape == (2, 6)
    assert torch.equal(out.sequences, model.generate(ids, attention_mask=mask, max_new_tokens=6, seed=7))
    assert torch.all((out.temperatures > 0) & (out.temperatures < 2))
    halved = model.generate(ids, attention_mask=mask, max_new_tokens=1, seed=7, temperature=0.5, return_dict_in_generate=True)
    torch.testing.assert_close(halved.temperatures, out.temperatures[:, :1] * 0.5)
    with pytest.raises(AutoDecoError, match="num_beams"):
        model.generate(ids, num_beams=4)
    with pytest.raises(AutoDecoError, match="right-padded"):
        model.generate(torch.tensor([[1, 5, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))


def test_hugging_face_assisted_generation_is_exact(make_model):
    """assistant_model= and prompt_lookup_num_tokens= run autodeco's speculative decoding: the
    sequences of its engine without drafts (seeded), whatever the drafts."""
    model = make_model("llama")
    ids = torch.tensor([[0, 0, 1, 70, 71, 70, 71], [1, 72, 73, 74, 75, 72, 73]])
    mask = (ids != 0).long()
    plain, temperatures, _ = decode_to_tensors(model, ids, mask, SamplingParams(max_new_tokens=12, seed=3), {2}, 0)
    for extra in ({"assistant_model": tiny_model("llama", seed=5), "num_assistant_tokens": 3}, {"assistant_model": model}, {"prompt_lookup_num_tokens": 4}):
        assisted = model.generate(ids, attention_mask=mask, max_new_tokens=12, seed=3, return_dict_in_generate=True, **extra)
        assert torch.equal(assisted.sequences, plain), sorted(extra)
        torch.testing.assert_close(assisted.temperatures, temperatures, rtol=1e-4, atol=1e-5)
    with pytest.raises(AutoDecoError, match="does not support \\['repetition_penalty'\\]"):
        model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=4, repetition_penalty=1.3)


def test_merged_dir_in_the_released_layout_loads(tmp_path, make_model):
    """The released merge script writes every base key, tied duplicates included, in one file."""
    model = make_model("llama")
    model.llm.config.tie_word_embeddings = False
    tensors = {f"llm.{k}": v.clone() for k, v in model.llm.state_dict().items()}
    tensors.update(model.heads.state_dict())
    (tmp_path / "merged").mkdir()
    save_file(tensors, str(tmp_path / "merged" / "model.safetensors"))
    (tmp_path / "merged" / "config.json").write_text(json.dumps(model.autodeco_config()))
    loaded = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[1, 9, 8, 7]])
    a, b = model(input_ids=ids), loaded(input_ids=ids)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.temperature, b.temperature) and torch.equal(a.top_p, b.top_p)
    with pytest.raises(AutoDecoError, match="merged checkpoint that already holds its base"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "merged", base=model.llm)


def test_one_forward_of_the_base_per_call(make_model, monkeypatch):
    model = make_model("qwen2")
    calls = []
    original = model.llm.forward
    monkeypatch.setattr(model.llm, "forward", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, eos_token_id=[])
    assert len(calls) == 1 + 3  # the call, then prefill + 2 decode steps (the 3rd token needs no forward)


def test_merged_dir_carries_no_sampling_defaults(make_model, tmp_path):
    """The heads replace the base's sampling defaults: engines that read generation_config.json
    (vLLM's generation_config="auto") must find none to apply on top of the learned values."""
    model = make_model("gemma3_text")
    model.llm.generation_config.update(do_sample=True, top_k=64, top_p=0.95, temperature=0.7)
    model.save_merged(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert not {"top_k", "top_p", "temperature", "do_sample"} & set(saved)
    assert saved["eos_token_id"] == model.llm.generation_config.eos_token_id


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_the_lm_head_sees_its_input_in_a_fresh_layout(architecture, make_model):
    """The prefill's last position is a [B, 1, H] view with the prompt's strides, which
    .contiguous() keeps; torch's CPU bf16 matmul on it copies the LM head per row (~20x slower)."""
    model = make_model(architecture)
    seen = []
    model.llm.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append((args[0].shape, args[0].stride())))
    for batch in (1, 3):
        ids = torch.arange(10, 10 + 7 * batch).reshape(batch, 7)
        model(input_ids=ids, logits_to_keep=1)
    assert [stride for _, stride in seen] == [torch.empty(shape).stride() for shape, _ in seen] and seen[0][0][1] == 1
