"""The command line: init, generate (text, JSON, colour), demo, and one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from autodeco.cli import app
from autodeco.token_view import temperature_color

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def heads_dir(tmp_path, base_dir):
    result = run("init", "--base", base_dir, "--out", tmp_path / "heads")
    assert result.exit_code == 0, result.output
    return tmp_path / "heads"


def test_init_then_generate_json(heads_dir, base_dir):
    assert sorted(p.name for p in heads_dir.iterdir()) == ["config.json", "model.safetensors"]
    result = run("generate", "--heads", heads_dir, "--prompt", "Once upon", "--max-new-tokens", 5, "--seed", 3, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"text", "finish_reason", "tokens"} and payload["finish_reason"] in ("stop", "length")
    assert all({"token", "temperature", "top_p"} <= set(t) for t in payload["tokens"])
    assert "".join(t["token"] for t in payload["tokens"]) == payload["text"]
    again = run("generate", "--model", base_dir, "--heads", heads_dir, "--prompt", "Once upon", "--max-new-tokens", 5, "--seed", 3, "--json")
    assert json.loads(again.stdout) == payload  # same seed, same output; --model overrides the config's base


def test_generate_streams_text_and_colours(heads_dir):
    plain = run("generate", "--heads", heads_dir, "--prompt", "Once upon", "--max-new-tokens", 6, "--seed", 1)
    coloured = run("generate", "--heads", heads_dir, "--prompt", "Once upon", "--max-new-tokens", 6, "--seed", 1, "--color")
    as_json = json.loads(run("generate", "--heads", heads_dir, "--prompt", "Once upon", "--max-new-tokens", 6, "--seed", 1, "--json").stdout)
    assert plain.exit_code == coloured.exit_code == 0
    assert plain.stdout.rstrip("\n") == coloured.stdout.rstrip("\n") == as_json["text"]
    assert "mean T" in plain.stderr and "finish:" in plain.stderr


def test_generate_speculative_gives_the_same_json_and_reports_drafts(heads_dir):
    options = ("generate", "--heads", heads_dir, "--prompt", "Once upon a time once upon a time", "--max-new-tokens", 12, "--seed", 2)
    plain = json.loads(run(*options, "--json").stdout)
    for source in ("ngram", "early-exit:1"):
        drafted = json.loads(run(*options, "--json", "--speculative", source, "--num-draft-tokens", 3).stdout)
        assert drafted.pop("speculation")["drafted"] > 0
        assert drafted["text"] == plain["text"] and [t["token_id"] for t in drafted["tokens"]] == [t["token_id"] for t in plain["tokens"]]
        # T and P from a forward over several positions agree with one-position forwards up to float rounding
        assert [t["temperature"] for t in drafted["tokens"]] == pytest.approx([t["temperature"] for t in plain["tokens"]], rel=1e-4)
    streamed = run(*options, "--speculative", "ngram")
    assert streamed.exit_code == 0 and "drafts accepted" in streamed.stderr and "tokens per target forward" in streamed.stderr
    bad = run(*options, "--speculative", "lookahead")
    assert bad.exit_code != 0 and "--speculative 'lookahead' is not understood" in bad.stderr


def test_temperature_colours_run_from_blue_to_red():
    assert temperature_color(0.0) == "rgb(60,110,255)" and temperature_color(2.0) == "rgb(255,110,60)"
    assert temperature_color(float("nan")) == "default"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "x", "--max-new-tokens", "0"], "max_new_tokens=0 must be >= 1"),
        (["--prompt", "x", "--temperature-scale", "-1"], "temperature_scale=-1.0 must be"),
        (["--prompt", "x", "--top-p-scale", "-0.5"], "top_p_scale=-0.5 must be"),
        (["--prompt", "x" * 2000], "context is 256 positions"),
        (["--prompt", "x", "--dtype", "int8"], "--dtype 'int8' is unknown"),
    ],
)
def test_bad_generate_input_is_a_one_line_error(heads_dir, extra, message):
    result = run("generate", "--heads", heads_dir, *extra)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output


def test_missing_things_are_named(tmp_path, heads_dir):
    missing_heads = run("generate", "--heads", tmp_path / "nope", "--prompt", "x")
    assert missing_heads.exit_code == 2 and f"{tmp_path / 'nope'} does not exist" in missing_heads.stderr
    missing_base = run("generate", "--model", tmp_path / "no-base", "--heads", heads_dir, "--prompt", "x")
    assert missing_base.exit_code == 2 and f"looked in the local folder {tmp_path / 'no-base'}" in missing_base.stderr
    no_heads = run("generate", "--model", tmp_path, "--prompt", "x")
    assert no_heads.exit_code == 2 and "--heads DIR is required" in no_heads.stderr
    bad_init = run("init", "--base", tmp_path / "no-base", "--out", tmp_path / "h")
    assert bad_init.exit_code == 2 and "cannot load base model" in bad_init.stderr


def test_merged_checkpoint_needs_no_heads_flag(tmp_path, base_dir):
    from autodeco import AutoDecoModelForCausalLM
    from autodeco.tiny import tiny_tokenizer

    AutoDecoModelForCausalLM.from_base(base_dir).save_merged(tmp_path / "merged")
    tiny_tokenizer().save_pretrained(tmp_path / "merged")
    result = run("generate", "--model", tmp_path / "merged", "--prompt", "Once", "--max-new-tokens", 3, "--json")
    assert result.exit_code == 0, result.output and len(json.loads(result.stdout)["tokens"]) <= 3


def test_demo_streams_answers_and_writes_an_html_page(heads_dir, base_dir, tmp_path):
    page = tmp_path / "demo.html"
    result = run("demo", "--model", base_dir, "--heads", heads_dir, "--html", page)
    assert result.exit_code == 0, result.output
    assert "Calculate 8 + 6." in result.stdout and result.stderr.count("mean T") == 3
    html = page.read_text()
    assert html.count("<section>") == 3 and 'title="T=' in html and "data:image/png;base64," in html


def test_demo_names_missing_heads(base_dir, tmp_path):
    result = run("demo", "--model", base_dir, "--heads", tmp_path / "none", "--html", tmp_path / "d.html")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_train_command_writes_heads_and_names_bad_data(tmp_path, base_dir):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question: What is {i} + 3? Answer:", "completion": f" {i + 3}."}) + "\n" for i in range(12)))
    result = runner.invoke(app, ["train", "--base", str(base_dir), "--data", str(data), "--out", str(tmp_path / "heads"), "--max-steps", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heads" / "model.safetensors").is_file() and "trained 2 steps" in result.output
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    result = runner.invoke(app, ["train", "--base", str(base_dir), "--data", str(data), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and f"{data}:2: not valid JSON" in result.output.replace("\n", "")
    assert not (tmp_path / "bad").exists()  # no training started


def test_eval_writes_results_report_and_plots(heads_dir, base_dir, tmp_path):
    problems = tmp_path / "sums.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"{a} + {a} =", "answer": 2 * a}) + "\n" for a in range(3)))
    out = tmp_path / "eval"
    args = ["eval", "--model", base_dir, "--heads", heads_dir, "--task", f"jsonl:{problems}", "--strategies", "greedy,static:0.7,1,mean,autodeco",
            "--samples", 2, "--max-new-tokens", 3, "--batch-size", 4, "--out", out]
    result = run(*args)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert {"model", "heads", "created", "tasks"} <= set(document)
    metrics = document["tasks"][f"jsonl:{problems}"]
    assert list(metrics) == ["greedy", "static:0.7,1", "mean", "autodeco"]
    assert metrics["autodeco"]["pass@k"].keys() == {"1", "2"} and metrics["mean"]["params"]["decoding"] == "static"
    assert {"report.md", "accuracy.png", "temperature_top_p.png", "example.png", "samples.jsonl", "run.json"} <= {p.name for p in out.iterdir()}
    assert "| strategy | pass@1 |" in (out / "report.md").read_text() and "| strategy | pass@1 |" in result.stdout
    assert "paired" not in metrics["autodeco"] and all(metrics[s]["paired"]["baseline"] == "autodeco" for s in ("greedy", "static:0.7,1", "mean"))
    assert {"diff", "stderr", "z", "ci95", "wins", "ties", "losses"} == set(metrics["greedy"]["paired"]["pass@1"]) and "majority" in metrics["greedy"]
    assert "Δ pass@1 vs autodeco (paired s.e., 95% bootstrap)" in (out / "report.md").read_text()
    again = run(*args)  # everything is on disk: nothing is generated again
    assert again.exit_code == 0 and json.loads((out / "results.json").read_text())["tasks"] == document["tasks"]


def test_eval_static_strategies_need_no_heads_and_bad_input_fails_in_one_line(base_dir, tmp_path):
    problems = tmp_path / "one.jsonl"
    problems.write_text('{"prompt": "1 + 1 =", "answer": 2}\n')
    ok = run("eval", "--model", base_dir, "--task", f"jsonl:{problems}", "--strategies", "greedy,default", "--samples", 1,
             "--max-new-tokens", 2, "--out", tmp_path / "a")
    assert ok.exit_code == 0, ok.output
    for extra, message in ((["--strategies", "beam"], "unknown strategy 'beam'"), (["--strategies", "autodeco"], "pass --heads"),
                           (["--task", "nope"], "unknown task 'nope'"), (["--samples", 0], "--samples must be at least 1"),
                           (["--oracle-dev-limit", 0], "--oracle-dev-limit must be at least 1")):
        args = ["eval", "--model", base_dir, "--task", f"jsonl:{problems}", "--max-new-tokens", 2, "--out", tmp_path / "b", *extra]
        result = run(*args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_sample_data_refuses_evaluation_only_tasks_before_loading_anything(tmp_path):
    result = run("sample-data", "--model", tmp_path / "no-model", "--task", "mmath", "--out", tmp_path / "d.jsonl")
    assert result.exit_code == 2 and "has no training split" in result.output


def test_serve_names_bad_settings_and_missing_heads_before_binding(tmp_path, heads_dir):
    bad_batch = run("serve", "--heads", heads_dir, "--max-batch-size", "0")
    assert bad_batch.exit_code == 2 and "--max-batch-size must be at least 1" in bad_batch.stderr
    missing = run("serve", "--heads", tmp_path / "nope")
    assert missing.exit_code == 2 and f"{tmp_path / 'nope'} does not exist" in missing.stderr
