"""The vLLM plugin: released checkpoints load, vLLM samples exactly from the learned distribution,
the released request semantics hold, and bad input is named."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from vllm import SamplingParams

from autodeco import AutoDecoModelForCausalLM, top_p_probs
from autodeco.errors import AutoDecoError
from autodeco.integrations.vllm import vllm_version_problem
from autodeco.integrations.vllm.controls import request_controls
from autodeco.integrations.vllm.model import AutoDecoForVLLM, base_architecture, locate_base
from autodeco.integrations.vllm.trace import learned_trace
from autodeco.sampling import apply_user_controls

from helpers import VOCAB, start_engine

ARCHITECTURES = ("llama", "qwen2", "gemma3_text")
PROMPT = [1, *range(40, 60)]  # 21 tokens: longer than Gemma's 8-token sliding window
STEPS = 12


@pytest.fixture(scope="module")
def references(checkpoints):
    """architecture -> autodeco's transformers model of the same checkpoint (the reference)."""
    return {
        name: AutoDecoModelForCausalLM.from_pretrained(path, None if name == "qwen2" else base, dtype=torch.float32)  # qwen2: merged
        for name, (path, base) in checkpoints.items()
    }


def learned(model, ids: list[int], count: int):
    """(logits, T, P) at the last ``count`` positions of ``ids`` (each predicting the next token)."""
    with torch.no_grad():
        tensor = torch.tensor([ids])
        out = model(input_ids=tensor, attention_mask=torch.ones_like(tensor), logits_to_keep=count)
    return out.logits[0], out.temperature[0], out.top_p[0]


def full_distributions(output) -> torch.Tensor:
    """[steps, V] probabilities from vLLM's full-vocabulary logprobs (absent tokens: 0)."""
    rows = torch.zeros(len(output.logprobs), VOCAB, dtype=torch.float64)
    for step, entries in enumerate(output.logprobs):
        for token, entry in entries.items():
            rows[step, token] = torch.tensor(entry.logprob, dtype=torch.float64).exp()
    return rows


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logprobs_are_the_learned_distribution(engines, references, architecture):
    params = SamplingParams(max_tokens=STEPS, temperature=1.0, top_p=1.0, logprobs=VOCAB, seed=3, ignore_eos=True)
    [result] = engines[architecture].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    output = result.outputs[0]
    got = full_distributions(output)
    logits, temperature, top_p = learned(references[architecture], PROMPT + list(output.token_ids[:-1]), STEPS)
    expected = top_p_probs(logits, temperature, top_p).double()
    assert torch.equal(got > 0, expected > 0), "same support: the nucleus at the learned P"
    assert (got - expected).abs().max() < 1e-5
    # the test means something only if T and P vary and the nucleus cuts
    assert temperature.std() > 0.05 and top_p.std() > 0.05
    assert (expected > 0).sum(dim=-1).min() < VOCAB / 2


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_tokens_equal_autodeco_greedy(engines, references, architecture):
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    [result] = engines[architecture].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    ours = references[architecture].generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=16, eos_token_id=[])
    assert list(result.outputs[0].token_ids) == ours[0, len(PROMPT):].tolist()


def test_sampled_tokens_follow_the_learned_distribution(engines, references):
    """Chi-square goodness of fit of 4,000 first tokens (fixed seeds) against top_p_probs;
    bins expected below 5 are pooled. Fails at the 0.001 level if the sampler is off."""
    draws = 4000
    params = [SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, seed=seed) for seed in range(draws)]
    results = engines["llama"].generate([{"prompt_token_ids": PROMPT}] * draws, params, use_tqdm=False)
    counts = torch.bincount(torch.tensor([r.outputs[0].token_ids[0] for r in results]), minlength=VOCAB).double()
    expected = top_p_probs(*learned(references["llama"], PROMPT, 1))[0].double() * draws
    assert counts[expected == 0].sum() == 0, "no token outside the nucleus"
    large, small = expected >= 5, (expected > 0) & (expected < 5)
    observed = torch.cat([counts[large], counts[small].sum().view(1)]) if small.any() else counts[large]
    wanted = torch.cat([expected[large], expected[small].sum().view(1)]) if small.any() else expected[large]
    assert large.sum() >= 5
    assert chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item()).pvalue > 1e-3


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_checkpoint_carries_no_sampling_defaults(engines, architecture):
    """Heads-only and merged dirs: vLLM's generation_config="auto" finds no top_k/top_p/temperature
    to apply on top of the learned values."""
    assert engines[architecture].llm_engine.model_config.get_diff_sampling_param() == {}


def test_controls_give_the_released_multiplier_semantics(engines, references):
    controls = {"temperature_scale": 0.6, "top_p_scale": 0.8, "t_min": 0.3}
    params = SamplingParams(max_tokens=6, logprobs=VOCAB, seed=5, ignore_eos=True, extra_args={"autodeco": controls})
    [result] = engines["llama"].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    output = result.outputs[0]
    logits, temperature, top_p = learned(references["llama"], PROMPT + list(output.token_ids[:-1]), 6)
    temperature, top_p = apply_user_controls(temperature, top_p, 0.6, 0.8, 0.3)
    expected = top_p_probs(logits, temperature, top_p).double()
    got = full_distributions(output)
    assert torch.equal(got > 0, expected > 0)
    assert (got - expected).abs().max() < 1e-5


def test_static_control_gives_the_base_distribution(engines, references):
    params = SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, logprobs=VOCAB, seed=5, ignore_eos=True,
                            extra_args={"autodeco_decoding": "static"})
    [result] = engines["llama"].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    output = result.outputs[0]
    logits, _, _ = learned(references["llama"], PROMPT + list(output.token_ids[:-1]), 4)
    got = full_distributions(output)
    expected = top_p_probs(logits, torch.full((4,), 0.7), torch.full((4,), 0.9)).double()  # vLLM's own static sampling
    assert torch.equal(got > 0, expected > 0)
    assert (got - expected).abs().max() < 1e-5


def test_trace_recomputes_the_values_that_sampled(engines, references, checkpoints):
    params = SamplingParams(max_tokens=5, seed=1, ignore_eos=True)
    [result] = engines["gemma3_text"].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    tokens = list(result.outputs[0].token_ids)
    trace = learned_trace(references["gemma3_text"], PROMPT, tokens)
    _, temperature, top_p = learned(references["gemma3_text"], PROMPT + tokens[:-1], 5)
    assert [t["token_id"] for t in trace] == tokens
    assert torch.allclose(torch.tensor([t["temperature"] for t in trace]), temperature, atol=1e-6)
    assert torch.allclose(torch.tensor([t["top_p"] for t in trace]), top_p, atol=1e-6)


def test_tensor_parallel_2_gives_the_same_distribution(checkpoints, engines, monkeypatch):
    """Two CPU workers, one core each (vLLM cannot bind two workers to one NUMA node by itself)."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    checkpoint, base = checkpoints["gemma3_text"]
    parallel = start_engine(checkpoint, base, tensor_parallel_size=2, hf_overrides={"base_model_name_or_path": base})
    params = SamplingParams(max_tokens=STEPS, temperature=1.0, top_p=1.0, logprobs=VOCAB, seed=4, ignore_eos=True)
    try:
        [split] = parallel.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    finally:
        parallel.llm_engine.engine_core.shutdown()
    [single] = engines["gemma3_text"].generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    assert split.outputs[0].token_ids == single.outputs[0].token_ids
    got, expected = full_distributions(split.outputs[0]), full_distributions(single.outputs[0])
    assert torch.equal(got > 0, expected > 0)
    assert (got - expected).abs().max() < 1e-5


# ---------------------------------------------------------------------- bad input, without an engine
def test_bad_controls_are_refused():
    with pytest.raises(AutoDecoError, match="unknown autodeco controls"):
        request_controls(SamplingParams(extra_args={"autodeco": {"temprature_scale": 1}}))
    with pytest.raises(AutoDecoError, match="must leave temperature=1"):
        request_controls(SamplingParams(temperature=0.5, extra_args={"autodeco": {"top_p_scale": 0.5}}))
    with pytest.raises(AutoDecoError, match="finite number >= 0"):
        request_controls(SamplingParams(extra_args={"autodeco": {"temperature_scale": -1}}))
    assert request_controls(SamplingParams()) is None


def test_unsupported_base_architecture_is_named_with_the_supported_list():
    from transformers import PretrainedConfig

    config = PretrainedConfig(architectures=["NoSuchForCausalLM"])
    config.model_type = "no_such"
    with pytest.raises(AutoDecoError, match=r"implements no NoSuchForCausalLM .* LlamaForCausalLM"):
        base_architecture(config)


def test_missing_base_names_the_override(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AutoDecoError, match="hf-overrides"):
        locate_base(str(tmp_path / "nowhere"), "heads")
    with pytest.raises(AutoDecoError, match="names no base_model_name_or_path"):
        locate_base(None, "heads")


def test_version_range():
    assert vllm_version_problem("0.32.0") is None
    assert "outside the range" in vllm_version_problem("0.40.1")
    assert "outside the range" in vllm_version_problem("0.31.2")
    assert "not a release number" in vllm_version_problem("dev")


def test_a_missing_base_stops_the_engine_with_the_fix(checkpoints, capfd):
    checkpoint, base = checkpoints["gemma3_text"]  # names a base that is not there
    with pytest.raises(RuntimeError):
        start_engine(checkpoint, base)
    captured = capfd.readouterr()  # the engine's processes log to the inherited stdout and stderr
    logged = captured.out + captured.err
    assert "cannot find the base 'the/base/moved/away'" in logged and "--hf-overrides" in logged


def test_no_compute_logits_local():
    """Batch-sharded sampling would hand compute_logits_local one vocabulary shard: the nucleus
    needs all of it, so the class must not offer it (vLLM then uses compute_logits)."""
    assert not hasattr(AutoDecoForVLLM, "compute_logits_local")


class RecordingBase(torch.nn.Module):
    """Stands in for vLLM's base model in load_weights: records the tensors it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str] = []

    def load_weights(self, weights):
        self.received = [name for name, _ in weights]
        return set(self.received)


def model_without_engine(hidden: int, base_name_or_path: str | None = None) -> AutoDecoForVLLM:
    from autodeco.heads import AutoDecoHeads

    model = AutoDecoForVLLM.__new__(AutoDecoForVLLM)
    torch.nn.Module.__init__(model)
    model.llm, model.heads = RecordingBase(), AutoDecoHeads(hidden)
    model.checkpoint, model.base_name_or_path = "ckpt", base_name_or_path
    return model


def head_tensors(hidden: int) -> list[tuple[str, torch.Tensor]]:
    from autodeco.heads import AutoDecoHeads

    return list(AutoDecoHeads(hidden).state_dict().items())


def test_load_weights_routes_merged_tensors_and_loads_the_heads():
    model = model_without_engine(32)
    heads = head_tensors(32)
    loaded = model.load_weights([heads[0], ("llm.model.embed.weight", torch.zeros(1)), *heads[1:], ("llm.lm_head.weight", torch.zeros(1))])
    assert model.llm.received == ["model.embed.weight", "lm_head.weight"]
    assert {"llm.model.embed.weight", "heads.temp_head.mlp.0.weight", "heads.top_p_head.mlp.2.bias"} <= loaded
    assert torch.equal(model.heads.temp_head.mlp[0].weight, heads[0][1])


def test_load_weights_refuses_heads_of_another_hidden_size_and_missing_tensors(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    from safetensors.torch import save_file

    save_file({"model.embed.weight": torch.zeros(2)}, str(base / "model.safetensors"))
    with pytest.raises(AutoDecoError, match="expect hidden size 16 but the base has hidden size 32"):
        model_without_engine(32, str(base)).load_weights(head_tensors(16))
    with pytest.raises(AutoDecoError, match=r"missing \['top_p_head.mlp.2.bias'\]"):
        model_without_engine(32, str(base)).load_weights(head_tensors(32)[:-1])
    model = model_without_engine(32, str(base))
    model.load_weights(head_tensors(32))
    assert model.llm.received == ["model.embed.weight"]  # heads-only: the base's own file


def test_untested_vllm_logs_one_line_and_registers_nothing(monkeypatch, caplog):
    import vllm
    from vllm import ModelRegistry

    from autodeco.integrations.vllm import register

    registered = []
    monkeypatch.setattr(ModelRegistry, "register_model", lambda *args: registered.append(args))
    monkeypatch.setattr(vllm, "__version__", "0.40.1")
    monkeypatch.delenv("AUTODECO_VLLM_ALLOW_UNTESTED", raising=False)
    with caplog.at_level("ERROR", logger="autodeco.vllm"):
        register()
    assert registered == [] and len(caplog.records) == 1 and "0.40.1 is outside the range" in caplog.records[0].getMessage()
    monkeypatch.setenv("AUTODECO_VLLM_ALLOW_UNTESTED", "1")
    register()
    assert registered == [("AutoDecoModelForCausalLM", "autodeco.integrations.vllm.model:AutoDecoForVLLM")]
