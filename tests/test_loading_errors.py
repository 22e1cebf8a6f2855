"""Bad checkpoints, configs, devices and output folders: one clear AutoDecoError from the loader,
one `error:` line and exit code 2 from every command; no traceback, nothing loaded silently."""

import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from autodeco import AutoDecoError, AutoDecoModelForCausalLM
from autodeco.cli import app
from autodeco.configuration import AutoDecoConfig
from autodeco.io import prepare_output_dir
from autodeco.modeling import base_reference, check_device, load_heads

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result) -> str:
    """The single `error:` line of a failed command (exit code 2, no traceback)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture
def heads_dir(tmp_path, base_dir):
    AutoDecoModelForCausalLM.from_base(base_dir).save_pretrained(tmp_path / "heads")
    return tmp_path / "heads"


@pytest.fixture
def merged_dir(tmp_path, base_dir, tokenizer):
    AutoDecoModelForCausalLM.from_base(base_dir).save_merged(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    return tmp_path / "merged"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, copied out of the file's memory map so the file can be rewritten."""
    return {name: tensor.clone() for name, tensor in load_file(path).items()}


def _corrupt(path: Path, how: str) -> None:
    """Break a safetensors file the ways files get broken: cut short, emptied, or a pickle renamed."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        torch.save(_tensors(path), path)  # a torch.save pickle written as model.safetensors


BROKEN_FILES = ["truncated", "empty", "pickle"]


# ---------------------------------------------------------------------- broken files
@pytest.mark.parametrize("how", BROKEN_FILES)
def test_broken_heads_weights_are_named(heads_dir, how):
    weights = heads_dir / "model.safetensors"
    _corrupt(weights, how)
    with pytest.raises(AutoDecoError, match=f"{weights} is not a readable safetensors file .*truncated, or not safetensors"):
        load_heads(heads_dir)
    assert str(weights) in one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))


@pytest.mark.parametrize("how", BROKEN_FILES)
def test_broken_base_weights_are_named(tmp_path, base_dir, heads_dir, how):
    weights = base_dir / "model.safetensors"
    _corrupt(weights, how)
    assert f"{weights} is not a readable safetensors file" in one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))
    assert f"{weights} is not a readable safetensors file" in one_error(run("init", "--base", base_dir, "--out", tmp_path / "new"))


def test_broken_merged_weights_are_named(merged_dir):
    _corrupt(merged_dir / "model.safetensors", "truncated")
    assert "model.safetensors is not a readable safetensors file" in one_error(run("generate", "--model", merged_dir, "--prompt", "x"))


@pytest.mark.parametrize("text,kind", [("[1, 2]", "holds an array, not a JSON object"), ("{\"model_type\": ", "is not valid JSON")])
def test_config_that_is_not_a_json_object_is_named(tmp_path, base_dir, heads_dir, text, kind):
    (heads_dir / "config.json").write_text(text)
    assert f"{heads_dir / 'config.json'} {kind}" in one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))
    (base_dir / "config.json").write_text(text)
    assert f"{base_dir / 'config.json'} {kind}" in one_error(run("init", "--base", base_dir, "--out", tmp_path / "new"))
    assert f"{base_dir / 'config.json'} {kind}" in one_error(run("generate", "--model", base_dir, "--prompt", "x"))


@pytest.mark.parametrize(
    "index,message",
    [
        ("{not json", "is not valid JSON"),
        ('{"metadata": {}}', "has no weight_map"),
        ('{"weight_map": {"llm.lm_head.weight": "model-00009-of-00009.safetensors"}}', "names shards that are not in"),
    ],
)
def test_bad_shard_index_is_named(tmp_path, base_dir, merged_dir, index, message):
    (merged_dir / "model.safetensors.index.json").write_text(index)
    assert message in one_error(run("generate", "--model", merged_dir, "--prompt", "x"))
    (base_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(AutoDecoError, match=message):
        AutoDecoModelForCausalLM.from_base(base_dir)


# ---------------------------------------------------------------------- devices
@pytest.mark.parametrize("device,message", [("tpu9", "device 'tpu9' is not a device name torch knows"), ("CPU", "is not a device name")])
def test_unknown_device_is_refused_before_loading(tmp_path, device, message):
    with pytest.raises(AutoDecoError, match=message):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "absent", device=device)  # the device is checked first
    with pytest.raises(AutoDecoError, match=message):
        AutoDecoModelForCausalLM.from_base(tmp_path / "absent", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(heads_dir):
    with pytest.raises(AutoDecoError, match="device 'cuda' is not available: this torch .*, or use --device cpu"):
        check_device("cuda")
    assert "device 'cuda:1' is not available" in one_error(run("generate", "--heads", heads_dir, "--prompt", "x", "--device", "cuda:1"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_past_the_last_gpu_is_refused():
    assert check_device("cuda") == torch.device("cuda")
    with pytest.raises(AutoDecoError, match="does not exist: this machine has"):
        check_device(f"cuda:{torch.cuda.device_count()}")


def test_every_command_with_a_device_option_checks_it(tmp_path, base_dir, heads_dir):
    problems = tmp_path / "one.jsonl"
    problems.write_text('{"prompt": "1 + 1 =", "answer": 2}\n')
    commands = [
        ["generate", "--heads", heads_dir, "--prompt", "x"],
        ["serve", "--heads", heads_dir],
        ["eval", "--model", base_dir, "--task", f"jsonl:{problems}", "--strategies", "greedy", "--out", tmp_path / "eval"],
        ["eval-control", "--model", base_dir, "--heads", heads_dir, "--task", f"jsonl:{problems}", "--out", tmp_path / "control"],
    ]
    for command in commands:
        assert "device 'tpu9' is not a device name" in one_error(run(*command, "--device", "tpu9")), command[0]
    assert check_device(None) is None and check_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------------- head tensors and config values
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e4m3fn, torch.complex64])
def test_head_tensors_that_are_not_floating_point_are_refused_by_name(heads_dir, dtype):
    weights = heads_dir / "model.safetensors"
    tensors = _tensors(weights)
    tensors["temp_head.mlp.2.bias"] = tensors["temp_head.mlp.2.bias"].to(dtype)
    save_file(tensors, str(weights))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(AutoDecoError, match=rf"head tensor temp_head.mlp.2.bias is {name}\b.*heads must be floating point \(float32/bfloat16/float16\)"):
        load_heads(heads_dir)


def test_float64_head_tensors_load(heads_dir):
    weights = heads_dir / "model.safetensors"
    tensors = _tensors(weights)
    save_file({k: v.double() for k, v in tensors.items()}, str(weights))
    assert torch.equal(load_heads(heads_dir).state_dict()["temp_head.mlp.0.weight"], tensors["temp_head.mlp.0.weight"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_head_weights_are_blamed_on_the_file_not_on_float16(heads_dir, value):
    weights = heads_dir / "model.safetensors"
    tensors = _tensors(weights)
    tensors["top_p_head.mlp.0.weight"][3, 5] = value
    save_file(tensors, str(weights))
    line = one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))
    assert "hold NaN or infinite values (top_p_head.mlp.0.weight)" in line and "corrupt or the training that wrote it diverged" in line
    assert "float16" not in line


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("use_enhanced_features", "no", "use_enhanced_features is a string ('no'); it must be true or false"),
        ("enable_top_p_head", 0, "enable_top_p_head is an integer (0); it must be true or false"),
        ("enable_temperature_head", None, "enable_temperature_head is null (None); it must be true or false"),
        ("temperature_hidden_size", "64", "temperature_hidden_size is a string ('64'); it must be a positive integer"),
        ("top_p_hidden_size", True, "top_p_hidden_size is a boolean (True); it must be a positive integer"),
        ("base_model_name_or_path", ["base"], "base_model_name_or_path is an array (['base']); it must be a string"),
    ],
)
def test_config_values_of_the_wrong_type_are_named(heads_dir, key, value, message):
    config_path = heads_dir / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    assert f"{config_path}: {message}" in one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))
    with pytest.raises(AutoDecoError, match=key):
        AutoDecoConfig.from_pretrained(heads_dir)  # what the vLLM plugin reads


# ---------------------------------------------------------------------- what --heads points to
def test_heads_that_are_a_file_or_hold_no_safetensors_are_explained(tmp_path, heads_dir):
    pickle = tmp_path / "heads.bin"
    torch.save(_tensors(heads_dir / "model.safetensors"), pickle)
    line = one_error(run("generate", "--heads", pickle, "--prompt", "x"))
    assert f"heads {pickle} is a file; heads are a folder holding config.json and model.safetensors" in line
    assert "pickled weights (.bin, .pt) are not loaded" in line and "does not exist" not in line
    line = one_error(run("generate", "--heads", heads_dir / "model.safetensors", "--prompt", "x"))
    assert "pass the folder that holds it and its config.json" in line
    (heads_dir / "model.safetensors").rename(heads_dir / "pytorch_model.bin")
    line = one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))
    assert "model.safetensors is missing (it holds pytorch_model.bin: pickled weights are not loaded" in line
    (heads_dir / "pytorch_model.bin").unlink()
    assert "model.safetensors is missing; an AutoDeco heads dir holds" in one_error(run("generate", "--heads", heads_dir, "--prompt", "x"))


# ---------------------------------------------------------------------- init --out and --base
def test_init_refuses_to_overwrite_heads_unless_asked(tmp_path, base_dir, heads_dir):
    trained = (heads_dir / "model.safetensors").read_bytes()
    line = one_error(run("init", "--base", base_dir, "--out", heads_dir, "--seed", 5))
    assert f"the heads folder {heads_dir} already exists and is not empty; pass --overwrite" in line
    assert (heads_dir / "model.safetensors").read_bytes() == trained
    result = run("init", "--base", base_dir, "--out", heads_dir, "--seed", 5, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (heads_dir / "model.safetensors").read_bytes() != trained and sorted(p.name for p in heads_dir.iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "empty").mkdir()
    assert run("init", "--base", base_dir, "--out", tmp_path / "empty").exit_code == 0  # an empty folder is no loss


def test_init_out_that_cannot_be_a_folder_is_named(tmp_path, base_dir):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert f"the heads folder {a_file} is an existing file" in one_error(run("init", "--base", base_dir, "--out", a_file))
    under = a_file / "heads"
    assert f"{a_file} is a file, not a folder" in one_error(run("init", "--base", base_dir, "--out", under / "deeper"))
    assert a_file.read_text() == "x"


def test_prepare_output_dir_names_unwritable_folders(tmp_path, monkeypatch):
    assert prepare_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    if sys.platform == "linux":  # nothing, not even root, creates folders in /proc
        with pytest.raises(AutoDecoError, match="cannot create the output folder /proc/autodeco-test/out"):
            prepare_output_dir(Path("/proc/autodeco-test/out"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere: pretend it may not
    with pytest.raises(AutoDecoError, match=f"the eval folder {tmp_path / 'c'} is not writable"):
        prepare_output_dir(tmp_path / "c", what="eval")


def test_init_out_in_an_unwritable_folder_is_named(tmp_path, base_dir, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the tests run as root, who may write anywhere
    assert f"the heads folder {tmp_path / 'heads'} is not writable" in one_error(run("init", "--base", base_dir, "--out", tmp_path / "heads"))


def test_init_stores_a_relative_base_as_an_absolute_path(tmp_path, base_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("init", "--base", os.path.relpath(base_dir, tmp_path), "--out", "heads")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["base_model_name_or_path"] == str(base_dir.resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads").heads.hidden_size == 64
    assert base_reference("gemma-3-270m") == "gemma-3-270m" and base_reference("org/not-a-folder") == "org/not-a-folder"


# ---------------------------------------------------------------------- what loading prints
@pytest.fixture
def transformers_log():
    """What transformers logs at its default verbosity (warnings), captured."""
    from transformers.utils import logging as hf_logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    library = logging.getLogger("transformers")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # conftest silences it below errors
    library.addHandler(handler)
    yield stream
    library.removeHandler(handler)
    hf_logging.set_verbosity(verbosity)


def test_loading_a_merged_dir_prints_no_load_report(merged_dir, transformers_log):
    result = run("generate", "--model", merged_dir, "--prompt", "Once", "--max-new-tokens", 2, "--seed", 0)
    assert result.exit_code == 0, result.output
    printed = transformers_log.getvalue() + result.output
    assert "LOAD REPORT" not in printed and "UNEXPECTED" not in printed and "to instantiate a model of type" not in printed


def test_a_merged_dir_with_foreign_tensors_still_gets_its_load_report(merged_dir, transformers_log):
    weights = merged_dir / "model.safetensors"
    tensors = _tensors(weights)
    tensors["llm.model.stray.weight"] = torch.zeros(2)
    save_file(tensors, str(weights))
    AutoDecoModelForCausalLM.from_pretrained(merged_dir)
    assert "LOAD REPORT" in transformers_log.getvalue() and "model.stray.weight" in transformers_log.getvalue()


def test_a_merged_dir_whose_config_does_not_fit_its_tensors_is_named(merged_dir, transformers_log):
    config = json.loads((merged_dir / "config.json").read_text())
    (merged_dir / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    line = one_error(run("generate", "--model", merged_dir, "--prompt", "x"))
    assert f"cannot load the base stored in the merged checkpoint {merged_dir}" in line and "do not belong together" in line
    assert "MISMATCH" in transformers_log.getvalue()  # transformers' report, which names the tensors, is shown
