"""Bad input to train, sample-data, eval and eval-control: one `error:` line naming the problem and
the fix, exit code 2, no traceback; Ctrl-C: one line saying how to continue, exit code 130; and
no run ever overwrites or mixes with the work of another."""

import json
import os
import signal

import pytest
from typer.testing import CliRunner

from autodeco import cli
from autodeco.cli import app
from autodeco.evaluation import runner as runner_module
from autodeco.training import trainer

runner = CliRunner()
TASK = "reasoning_gym:basic_arithmetic"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, *fragments: str) -> str:
    """The single `error:` line of a result that failed with exit code 2; it holds every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question: {i} + 3 =", "completion": f" {i + 3}."}) + "\n" for i in range(8)))
    return path


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a} + {a} =", "answer": 2 * a}) + "\n" for a in range(3)))
    return path


@pytest.fixture
def sigint_restored():
    """The CLI leaves its second-Ctrl-C handler installed for the rest of the process: put pytest's back."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def train(base_dir, data, out, *extra):
    return run("train", "--base", base_dir, "--data", data, "--out", out, "--batch-size", 4, *extra)


def bad_out(tmp_path, case, monkeypatch):
    """An --out that cannot be a folder, and what its error says."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    if case == "file":
        return blocker, "is an existing file"
    if case == "under a file":
        return blocker / "out", f"{blocker} is a file"
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # the tests run as root, for whom every folder is writable: make this one not
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: real_access(path, mode, **kw) and not (str(path) == str(locked) and mode & os.W_OK))
    return locked, "is not writable"


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_train_names_an_out_that_cannot_be_a_folder(tmp_path, base_dir, data, case, monkeypatch):
    out, message = bad_out(tmp_path, case, monkeypatch)
    one_error(train(base_dir, data, out, "--max-steps", 1), message, str(out))


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_eval_names_an_out_that_cannot_be_a_folder_before_loading_the_model(tmp_path, problems, case, monkeypatch):
    out, message = bad_out(tmp_path, case, monkeypatch)
    result = run("eval", "--model", tmp_path / "no-model", "--task", f"jsonl:{problems}", "--strategies", "greedy", "--out", out)
    one_error(result, message, str(out))


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_eval_control_names_an_out_that_cannot_be_a_folder_before_loading_the_model(tmp_path, problems, case, monkeypatch):
    out, message = bad_out(tmp_path, case, monkeypatch)
    result = run("eval-control", "--model", tmp_path / "no-model", "--heads", tmp_path / "no-heads", "--task", f"jsonl:{problems}", "--out", out)
    one_error(result, message, str(out))


def test_sample_data_names_outputs_that_cannot_be_written_before_loading_the_model(tmp_path, monkeypatch):
    def sample_data(out):
        return run("sample-data", "--model", tmp_path / "no-model", "--task", TASK, "--out", out)

    folder = tmp_path / "folder"
    folder.mkdir()
    one_error(sample_data(folder), f"--out {folder} is a folder", "pass a file path")
    out, message = bad_out(tmp_path, "under a file", monkeypatch)
    one_error(sample_data(out / "data.jsonl"), message)
    locked, message = bad_out(tmp_path, "read-only", monkeypatch)
    one_error(sample_data(locked / "data.jsonl"), message, str(locked))


def test_train_heads_that_are_a_truncated_file_is_one_line(tmp_path, base_dir, data):
    heads = tmp_path / "heads"
    assert run("init", "--base", base_dir, "--out", heads).exit_code == 0
    weights = heads / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_error(train(base_dir, data, tmp_path / "run", "--heads", heads, "--max-steps", 1), str(weights), "truncated")


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path, base_dir, data, problems):
    data.write_bytes(data.read_bytes() + b'{"prompt": "caf\xe9", "completion": " x"}\n')
    one_error(train(base_dir, data, tmp_path / "run", "--max-steps", 1), f"{data}:9:", "byte 16 of the line (0xe9) is not UTF-8", "save the file as UTF-8")
    problems.write_bytes(b'{"prompt": "1 + 1 =", "answer": 2}\n{"prompt": "\xff", "answer": 1}\n')
    result = run("eval", "--model", base_dir, "--task", f"jsonl:{problems}", "--strategies", "greedy", "--out", tmp_path / "eval")
    one_error(result, f"{problems}:2:", "byte 13 of the line (0xff) is not UTF-8")


@pytest.mark.parametrize(
    "prompt_ids, message",
    [
        ([True, 2], "prompt_ids[0] is true, not a token id"),
        ([1, 2.5], "prompt_ids[1] is 2.5, not a token id"),
        ([-1], "prompt_ids[0] is -1, not a token id"),
        ("1 2", "'prompt_ids' must be a list of token ids"),
        ([1, 99_999], "token id 99999 is outside the tokenizer's vocabulary"),
    ],
)
def test_token_ids_that_are_not_token_ids_are_refused_by_file_and_line(tmp_path, base_dir, data, prompt_ids, message):
    data.write_text(json.dumps({"prompt_ids": [1, 2], "completion_ids": [3]}) + "\n" + json.dumps({"prompt_ids": prompt_ids, "completion_ids": [3]}) + "\n")
    one_error(train(base_dir, data, tmp_path / "run", "--max-steps", 1), f"{data}:2:", message)
    assert not (tmp_path / "run").exists()


def test_a_new_run_never_overwrites_or_mixes_with_an_earlier_one(tmp_path, base_dir, data):
    out = tmp_path / "run"
    assert train(base_dir, data, out, "--max-steps", 2, "--checkpoint-every", 1).exit_code == 0
    heads = (out / "model.safetensors").read_bytes()
    log = (out / "metrics.jsonl").read_text()

    refused = train(base_dir, data, out, "--max-steps", 1, "--lr", 0.1)
    one_error(refused, f"{out} already holds an earlier run's", "--resume to continue it from step-00000002", "--overwrite")
    assert (out / "model.safetensors").read_bytes() == heads and (out / "metrics.jsonl").read_text() == log

    one_error(train(base_dir, data, out, "--resume", "--overwrite"), "pass one of them")

    again = train(base_dir, data, out, "--max-steps", 1, "--lr", 0.1, "--overwrite")
    assert again.exit_code == 0, again.output
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]  # none of the earlier run's
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "model.safetensors").read_bytes() != heads

    resumed = train(base_dir, data, out, "--max-steps", 2, "--lr", 0.1, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_train_refuses_to_write_over_the_heads_it_starts_from(tmp_path, base_dir, data):
    heads = tmp_path / "heads"
    one_error(train(base_dir, data, heads, "--heads", heads, "--overwrite"), "--heads and --out are the same folder")


def test_ctrl_c_during_train_says_how_to_resume(tmp_path, base_dir, data, monkeypatch, sigint_restored):
    original_step = trainer.Trainer.step

    def interrupted_at(stop):
        def step(self, index):
            if index == stop:
                raise KeyboardInterrupt
            return original_step(self, index)
        return step

    out = tmp_path / "run"
    monkeypatch.setattr(trainer.Trainer, "step", interrupted_at(0))
    early = train(base_dir, data, out, "--max-steps", 3, "--checkpoint-every", 1)
    assert early.exit_code == 130 and "Traceback" not in early.output
    assert "interrupted; no checkpoint was written yet; rerun the same command to start again" in early.stderr

    monkeypatch.setattr(trainer.Trainer, "step", interrupted_at(2))
    late = train(base_dir, data, out, "--max-steps", 3, "--checkpoint-every", 1)
    assert late.exit_code == 130 and "Traceback" not in late.output
    assert f"interrupted; rerun the same command with --resume to continue from {out / 'checkpoints' / 'step-00000002'}" in late.stderr

    monkeypatch.setattr(trainer.Trainer, "step", original_step)
    resumed = train(base_dir, data, out, "--max-steps", 3, "--checkpoint-every", 1, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_ctrl_c_during_eval_keeps_the_samples_and_a_second_one_exits_at_once(tmp_path, base_dir, problems, monkeypatch, sigint_restored):
    calls = {"n": 0}
    real_generate = runner_module.generate

    def interrupted_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate", interrupted_on_second_batch)
    out = tmp_path / "eval"
    args = ("eval", "--model", base_dir, "--task", f"jsonl:{problems}", "--strategies", "greedy", "--batch-size", 2, "--max-new-tokens", 2, "--out", out)
    result = run(*args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert f"interrupted; the finished samples are saved in {out / 'samples.jsonl'}; rerun the same command to continue" in result.stderr
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2  # the first batch

    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # a second Ctrl-C, while the first one is handled
    assert exits == [130]

    monkeypatch.setattr(runner_module, "generate", real_generate)
    assert run(*args).exit_code == 0
    assert calls["n"] == 2  # the first batch was not generated again


def test_misleading_messages_are_fixed(tmp_path, base_dir, data):
    one_error(train(base_dir, tmp_path, tmp_path / "run"), f"training data {tmp_path} is a folder, not a file", "--data")
    no_base = one_error(train(tmp_path / "nope", data, tmp_path / "run"), "pass --base")
    assert "--model" not in no_base
    # rich markup ate "[t_min, t_max]" from this message
    result = run("eval", "--model", tmp_path / "no-model", "--task", "jsonl:x.jsonl", "--strategies", "dynatemp:0.3,inf", "--out", tmp_path / "e")
    one_error(result, "maps entropy onto [t_min, t_max]: give a finite t_max")


@pytest.mark.parametrize(
    "strategies, message",
    [
        ("greedy,beam:4", "unknown strategy 'beam'; strategies are: greedy, default"),
        ("autodeco,gredy", "unknown strategy 'gredy'; strategies are: greedy, default"),
    ],
)
def test_unknown_strategies_are_named(tmp_path, strategies, message):
    result = run("eval", "--model", tmp_path / "no-model", "--task", "jsonl:x.jsonl", "--strategies", strategies, "--out", tmp_path / "e")
    line = one_error(result, message)
    assert line.endswith("did you mean 'greedy'?") == ("gredy" in strategies)


def test_eval_refuses_an_unknown_baseline_and_oracle_dev_without_a_dev_split_before_loading_the_model(tmp_path):
    def run_eval(*extra):
        return run("eval", "--model", tmp_path / "no-model", "--task", "jsonl:x.jsonl", "--out", tmp_path / "e", *extra)

    one_error(run_eval("--strategies", "greedy,default", "--baseline", "autodeco"),
              "--baseline 'autodeco' is not among the strategies; choose one of: greedy, default")
    one_error(run_eval("--strategies", "greedy,oracle-dev"),
              "task 'jsonl:x.jsonl' has no dev split", "(reasoning_gym tasks have split=dev); drop oracle-dev or use oracle")
    assert not (tmp_path / "e").exists()


def test_sample_data_names_an_unknown_task(tmp_path):
    result = run("sample-data", "--model", tmp_path / "no-model", "--task", "nosuch:x", "--out", tmp_path / "d.jsonl")
    line = one_error(result, "unknown task 'nosuch:x'; task families are:", "reasoning_gym")
    assert "training split" not in line
