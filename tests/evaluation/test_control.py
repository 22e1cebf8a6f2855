"""eval-control: paired readings of one answer under each decoding command, and the report."""

import json

import pytest
from typer.testing import CliRunner

from autodeco.cli import app
from autodeco.evaluation.control import PHRASING_SETS, Reading, measure, summarise
from autodeco.training.nl_control import CONDITIONS


def test_each_prompt_is_read_plain_and_under_every_command(make_model, tokenizer):
    model = make_model("llama")
    prompts = ["Question: What is 2 + 3?\nAnswer:", "Once upon a time"]
    readings = measure(model, tokenizer, prompts, chat=False, max_new_tokens=6, batch_size=3)
    assert len(readings) == len(prompts) * (1 + len(PHRASING_SETS) * len(CONDITIONS))
    for index in range(len(prompts)):
        mine = [r for r in readings if r.prompt_index == index]
        assert [r.condition for r in mine] == ["plain"] + list(CONDITIONS) * len(PHRASING_SETS)
        assert all(0 < r.temperature < 2 and 0 < r.top_p < 1 for r in mine)
        assert len({(r.temperature, r.top_p) for r in mine}) > 1  # the command changes the reading
    chat = measure(model, tokenizer, [[{"role": "user", "content": "What is 2 + 3?"}]], chat=True, max_new_tokens=4)
    assert len(chat) == 1 + len(PHRASING_SETS) * len(CONDITIONS)


def test_summary_counts_shifts_the_commanded_way():
    def reading(index, set_name, condition, t, p):
        return Reading(index, set_name, condition, "x", t, p)

    readings = [reading(i, "plain", "plain", 0.8, 0.9) for i in range(4)]
    for set_name in PHRASING_SETS:
        readings += [reading(i, set_name, "high", 0.8 + (0.2 if i < 3 else -0.1), 0.95) for i in range(4)]
        readings += [reading(i, set_name, "low", 0.6, 0.8) for i in range(4)]
        readings += [reading(i, set_name, "deterministic", 0.1, 0.9) for i in range(4)]
    summary = summarise(readings)
    high = summary["trained"]["high"]
    assert high["temperature_right_direction"] == 0.75 and high["temperature_shift"] == pytest.approx(0.125)
    assert high["top_p_right_direction"] == 1.0 and summary["held_out"]["low"]["temperature_shift"] == pytest.approx(-0.2)
    assert summary["trained"]["deterministic"]["mean_temperature"] == pytest.approx(0.1)
    assert summary["trained"]["deterministic"]["top_p_right_direction"] == 0.0  # P did not move


def test_eval_control_command_writes_the_table(tmp_path, base_dir):
    runner = CliRunner()
    heads = tmp_path / "heads"
    assert runner.invoke(app, ["init", "--base", str(base_dir), "--out", str(heads)]).exit_code == 0
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"Question: What is {i} + 1?\nAnswer:", "answer": i + 1}) + "\n" for i in range(3)))
    out = tmp_path / "control"
    result = runner.invoke(app, ["eval-control", "--model", str(base_dir), "--heads", str(heads), "--task", f"jsonl:{problems}",
                                 "--prompts", "2", "--max-new-tokens", "4", "--out", str(out), "--prompt-style", "few-shot"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["prompts"] == 2 and set(summary["trained"]) == set(CONDITIONS)
    assert "| held-out | deterministic |" in (out / "report.md").read_text() and (out / "control.png").stat().st_size > 0
    bad = runner.invoke(app, ["eval-control", "--model", str(base_dir), "--heads", str(heads), "--prompts", "0", "--out", str(out)])
    assert bad.exit_code == 2 and "--prompts must be at least 1" in bad.stderr
