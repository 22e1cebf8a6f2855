"""Self-generated training data: verified-correct samples of the training split, resumable."""

import json

import pytest

from autodeco.errors import AutoDecoError
from autodeco.evaluation import runner as runner_module
from autodeco.evaluation.runner import EvalSettings
from autodeco.evaluation.tasks import Problem, Score, Task, register_task
from autodeco.training.data import load_examples
from autodeco.training.self_data import sample_training_data, training_task


class EvenFirstCharacter(Task):
    """Right when the answer's first character has an even code; the split changes the problems."""

    def __init__(self, split: str) -> None:
        self.split = split

    def problems(self):
        return [Problem(f"{self.split}-{i}", f"Item {i} of {self.split}:", None) for i in range(5)]

    def prompt(self, problem, chat):
        return f"Say something. {problem.question}"

    def stop(self, chat):
        return ("\n",)

    def score(self, problem, completion):
        return Score(bool(completion) and ord(completion[0]) % 2 == 0, completion[:1] or None)


register_task("even_first", has_train_split=True)(lambda argument, options: EvenFirstCharacter(options.get("split", "test")))
SETTINGS = EvalSettings(model="tiny", heads=None, heads_sha256=None, chat=False, max_new_tokens=4, seed=0, dtype="torch.float32")


def test_keeps_only_verified_samples_of_the_training_split_as_token_ids(make_model, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "data.jsonl"
    yields = sample_training_data(make_model(), tokenizer, SETTINGS, ["even_first"], out, problems=4, samples=3, batch_size=4)
    [summary] = yields
    assert (summary.task, summary.problems, summary.samples) == ("even_first,split=train", 4, 12)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary.correct > 0 and all(r["problem"].startswith("train-") for r in rows)
    records = {(r["problem"], r["sample"]): r for r in map(json.loads, (tmp_path / "data.jsonl.samples" / "samples.jsonl").read_text().splitlines())}
    for row in rows:
        assert ord(row["completion"][0]) % 2 == 0
        assert tokenizer.decode(row["prompt_ids"]).endswith(row["prompt"].split("Say something. ")[-1])
        record = records[(row["problem"], row["sample"])]
        ending = [record["stop_token_id"]] if record["stop_token_id"] is not None else []
        assert row["completion_ids"] == record["token_ids"] + ending  # exactly as sampled, with the token that ended it
    examples, stats = load_examples(out, tokenizer, max_length=256)
    assert len(examples) == len(rows)

    def no_generation(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(runner_module, "generate", no_generation)  # resumes from OUT.samples/: nothing to redo
    assert sample_training_data(make_model(), tokenizer, SETTINGS, ["even_first"], out, problems=4, samples=3, batch_size=4) == yields


def test_tasks_without_a_training_split_are_refused():
    with pytest.raises(AutoDecoError, match="has no training split"):
        training_task("mmath:math500")
    with pytest.raises(AutoDecoError, match="must come from split=train"):
        training_task("reasoning_gym:chain_sum,split=test")
    assert training_task("reasoning_gym:chain_sum").split == "train"
