"""Head training end to end on tiny real bases: the signal is right, runs resume exactly, the base
never changes, and every failure leaves the last good checkpoint."""

import errno
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from autodeco import AutoDecoModelForCausalLM
from autodeco.decoding import decode_to_tensors
from autodeco.errors import AutoDecoError
from autodeco.modeling import final_hidden_states, logits_from_hidden
from autodeco.sampling import SamplingParams
from autodeco.tiny import tiny_model
from autodeco.training import checkpoints, trainer
from autodeco.training.losses import soft_top_p_loss, target_cumulative_mass
from autodeco.training.trainer import TrainConfig, TrainingDiverged, train

PROMPT_LENGTH, NEW_TOKENS = 6, 24


def _sampled_data(tmp_path, tokenizer, temperature: float, rows: int = 256):
    """A tiny Llama with a sharpened LM head (logits of a real model's spread) and its own
    completions sampled at ``temperature`` with top-p 1, saved as token ids."""
    base = tiny_model("llama", seed=3)
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(40)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    prompts = torch.randint(3, 384, (rows, PROMPT_LENGTH), generator=torch.Generator().manual_seed(0))
    params = SamplingParams(decoding="static", temperature=temperature, top_p=1.0, max_new_tokens=NEW_TOKENS, seed=1)
    sequences, _, _ = decode_to_tensors(AutoDecoModelForCausalLM.from_base(base), prompts, torch.ones_like(prompts), params, set(), 0)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt_ids": r[:PROMPT_LENGTH], "completion_ids": r[PROMPT_LENGTH:]}) + "\n" for r in sequences.tolist()))
    return tmp_path / "base", path


@pytest.fixture
def small_run(tmp_path, tokenizer):
    base, data = _sampled_data(tmp_path, tokenizer, 1.0, rows=48)
    return dict(base=str(base), data=str(data), batch_size=8, checkpoint_every=2, progress=False, lr=1e-3)


def _heads(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("true_temperature", [0.5, 1.4])
def test_recovers_the_sampling_temperature(tmp_path, tokenizer, true_temperature):
    """Completions sampled at T0 (top-p 1); temperature loss only, no DFT, no masking: the mean
    predicted temperature on the data lands within 0.1 of T0."""
    base, data = _sampled_data(tmp_path, tokenizer, true_temperature)
    out = tmp_path / "run"
    train(TrainConfig(base=str(base), data=str(data), out=str(out), losses=("temperature",), dft=False, easy_token_drop=0.0,
                      max_steps=60, lr=5e-3, batch_size=16, progress=False))
    model = AutoDecoModelForCausalLM.from_pretrained(out)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ids = torch.tensor([r["prompt_ids"] + r["completion_ids"] for r in rows])
    with torch.no_grad():
        predicted = model(ids).temperature[:, PROMPT_LENGTH - 1 : -1]
    assert abs(predicted.mean().item() - true_temperature) < 0.1
    assert model.heads.enable_top_p_head is False  # not trained, so neutral at inference


def test_run_writes_released_heads_log_plot_and_leaves_base_untouched(tmp_path, small_run):
    base = AutoDecoModelForCausalLM.from_base(small_run["base"]).llm
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in base.state_dict().values())).hexdigest()
    out = tmp_path / "run"
    result = train(TrainConfig(out=str(out), max_steps=4, **small_run))
    assert set(_heads(out)) == {f"{h}.mlp.{i}.{p}" for h in ("temp_head", "top_p_head") for i in (0, 2) for p in ("weight", "bias")}
    model = AutoDecoModelForCausalLM.from_pretrained(out)  # the base is found from config.json
    after = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.llm.state_dict().values())).hexdigest()
    assert after == digest
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and result.steps == 4
    assert all(r["temperature_loss"] > 0 and r["top_p_loss"] > 0 and 0 < r["mean_top_p"] < 1 for r in records)
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_resume_equals_uninterrupted(tmp_path, small_run, monkeypatch):
    config = dict(max_steps=6, **small_run)
    train(TrainConfig(out=str(tmp_path / "straight"), **config))

    original_step = trainer.Trainer.step

    def crash_at_five(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return original_step(self, step)

    monkeypatch.setattr(trainer.Trainer, "step", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "resumed"), **config))
    monkeypatch.setattr(trainer.Trainer, "step", original_step)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **config))

    for name, tensor in _heads(tmp_path / "straight").items():
        assert torch.equal(tensor, _heads(tmp_path / "resumed")[name]), name
    logs = [[{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_second", "elapsed_seconds")}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("straight", "resumed")]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_feature_cache_gives_the_same_heads(tmp_path, small_run, where):
    config = dict(epochs=2, **small_run)
    train(TrainConfig(out=str(tmp_path / "plain"), **config))
    train(TrainConfig(out=str(tmp_path / "cached"), cache_features=where, **config))
    for name, tensor in _heads(tmp_path / "plain").items():
        assert torch.equal(tensor, _heads(tmp_path / "cached")[name]), name
    if where == "disk":
        assert json.loads((tmp_path / "cached" / "feature-cache" / "meta.json").read_text())["rows"] > 0


def test_resume_errors(tmp_path, small_run, tokenizer):
    with pytest.raises(AutoDecoError, match="no checkpoint under"):
        train(TrainConfig(out=str(tmp_path / "fresh"), resume=True, **small_run))
    train(TrainConfig(out=str(tmp_path / "run"), max_steps=2, **small_run))
    other = tmp_path / "other-base"
    tiny_model("qwen2").save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(AutoDecoError, match="made with another base model"):
        train(TrainConfig(out=str(tmp_path / "run"), resume=True, **{**small_run, "base": str(other)}))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_run, monkeypatch):
    calls = {"n": 0}
    real = trainer.autodeco_losses

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        temperature_losses, top_p_losses = real(*args, **kwargs)
        return (temperature_losses * float("nan") if calls["n"] > 3 else temperature_losses), top_p_losses  # one chunk per step: NaN from step 4

    monkeypatch.setattr(trainer, "autodeco_losses", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step \d+.*last good checkpoint is .*step-0000000\d"):
        train(TrainConfig(out=str(out), max_steps=6, **small_run))
    assert not (out / "model.safetensors").exists()
    good = checkpoints.latest_checkpoint(out)
    assert all(torch.isfinite(t).all() for t in _heads(good).values())


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, small_run, monkeypatch):
    out = tmp_path / "run"
    real = checkpoints.atomic_save_tensors
    writes = {"n": 0}

    def fill_disk(tensors, path):
        if path.name == checkpoints.OPTIMIZER_NAME:
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(checkpoints, "atomic_save_tensors", fill_disk)
    with pytest.raises(AutoDecoError, match=r"No space left on device.*step-00000002 is intact"):
        train(TrainConfig(out=str(out), max_steps=6, **small_run))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.setattr(checkpoints, "atomic_save_tensors", real)
    train(TrainConfig(out=str(out), max_steps=6, resume=True, **small_run))
    assert (out / "model.safetensors").is_file()


def test_bad_settings_are_named(tmp_path, small_run):
    for change, message in (({"losses": ("entropy",)}, "--losses must name"), ({"lr": -1.0}, "--lr must be"),
                            ({"easy_token_drop": 1.5}, "--easy-token-drop"), ({"batch_size": 0}, "--batch-size"),
                            ({"top_p_lr_scale": 0.0}, "--top-p-lr-scale")):
        with pytest.raises(AutoDecoError, match=message):
            train(TrainConfig(out=str(tmp_path / "x"), **{**small_run, **change}))


def _mean_t_and_p(model, prompt_ids: list[int], completion_ids: list[int]) -> tuple[float, float]:
    """Mean predicted T and P over the completion's positions."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return float(out.temperature[0, len(prompt_ids) - 1 : -1].mean()), float(out.top_p[0, len(prompt_ids) - 1 : -1].mean())


def test_nl_control_teaches_the_heads_to_follow_commands(tmp_path, tokenizer):
    """Completions sampled at T = 1 (so the plain T has room both ways); after training, a trained
    phrasing moves the mean T of most prompts the commanded way, and the mean P with it (a tiny
    random base and 120 steps: the Gemma heads are measured by eval-control)."""
    from autodeco.training.nl_control import PHRASINGS, command_record

    base, data = _sampled_data(tmp_path, tokenizer, 1.0, rows=96)
    out = tmp_path / "run"
    result = train(TrainConfig(base=str(base), data=str(data), out=str(out), nl_control=True, nl_variants=3, max_steps=120, lr=3e-3,
                               batch_size=16, progress=False, cache_features="memory"))
    assert result.final["nl_control_loss"] is not None
    model = AutoDecoModelForCausalLM.from_pretrained(out)
    records = [json.loads(line) for line in data.read_text().splitlines()[:12]]
    moved = {condition: [] for condition in PHRASINGS}
    for record in records:
        plain_t, plain_p = _mean_t_and_p(model, record["prompt_ids"], record["completion_ids"])
        for condition, phrasings in PHRASINGS.items():
            t, p = _mean_t_and_p(model, command_record(record, phrasings[0], tokenizer)["prompt_ids"], record["completion_ids"])
            moved[condition].append((t - plain_t, p - plain_p, t))
    for condition, sign in (("high", 1), ("low", -1), ("deterministic", -1)):
        shifts = torch.tensor([dt for dt, _, _ in moved[condition]]) * sign
        assert float(shifts.mean()) > 0.05 and float((shifts > 0).float().mean()) >= 0.8, (condition, moved[condition])
    assert float(torch.tensor([dp for _, dp, _ in moved["high"]]).mean()) > 0 > float(torch.tensor([dp for _, dp, _ in moved["low"]]).mean())


def test_top_p_lr_scale_keeps_the_top_p_head_out_of_saturation(tmp_path, tokenizer):
    """At a high lr the top-p head's sigmoid saturates (the shipped Gemma heads: pre-sigmoid ~18
    after lr 5e-4): P is exactly 1.0 in float32, its gradient exactly 0, and no loss moves it
    again, not even the soft top-p loss of targets inside the nucleus, which asks for a smaller
    P. With --top-p-lr-scale the same run keeps P below 1, and that loss moves P down."""
    base, data = _sampled_data(tmp_path, tokenizer, 1.0, rows=48)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ids = torch.tensor([r["prompt_ids"] + r["completion_ids"] for r in rows])
    for scale in (1.0, 0.01):
        model = train(TrainConfig(base=str(base), data=str(data), out=str(tmp_path / f"run-{scale}"), batch_size=8, lr=5e-2, max_steps=30,
                                  top_p_lr_scale=scale, checkpoint_every=100, progress=False)).model
        with torch.no_grad():
            hidden = final_hidden_states(model.llm, ids, torch.ones_like(ids))[:, PROMPT_LENGTH - 1 : -1].reshape(-1, model.heads.hidden_size)
            logits = logits_from_hidden(model.llm, hidden).float()
        temperature, top_p = model.heads(hidden, logits)
        targets = logits.argmax(-1)
        inside = target_cumulative_mass(logits, temperature, targets) < top_p.detach()  # each of these asks for a smaller P
        saturated = top_p.detach() == 1.0
        head = list(model.heads.top_p_head.parameters())
        losses = soft_top_p_loss(logits, temperature.detach(), top_p, targets)
        if scale == 1.0:
            assert saturated.float().mean() > 0.8 and (inside & saturated).float().mean() > 0.5
            grads = torch.autograd.grad(losses[inside & saturated].sum(), head)
            assert all((grad == 0).all() for grad in grads)  # no gradient reaches a saturated P
        else:
            assert not saturated.any() and inside.float().mean() > 0.5
            grads = torch.autograd.grad(losses[inside].sum(), head)
            with torch.no_grad():
                for parameter, grad in zip(head, grads):
                    parameter.sub_(1e-3 * grad.sign())  # one small sign-descent step, as Adam takes
                after = model.heads(hidden, logits)[1]
            assert after[inside].mean() < top_p.detach()[inside].mean() - 1e-4
