"""The runner on a tiny random model: results shape, oracle and mean, resume, bad settings."""

import json

import pytest

from autodeco.errors import AutoDecoError
from autodeco.evaluation import runner as runner_module
from autodeco.evaluation.runner import SAMPLES_NAME, EvalPlan, EvalSettings, Evaluator, SampleStore
from autodeco.evaluation.strategies import parse_strategies
from autodeco.evaluation.tasks import Problem, Score, Task, load_task, register_task


class ParityTask(Task):
    """A task for tests, added through the public registry: a completion is right when its
    first character's code is even, so accuracy depends on how the model samples."""

    def __init__(self, answers: bool = True) -> None:
        self.answers = answers

    def problems(self):
        return [Problem(str(i), f"Question {i}:", None) for i in range(6)]

    def prompt(self, problem, chat):
        return f"Count with me. {problem.question}"

    def score(self, problem, completion):
        if not self.answers or not completion:
            return Score(False, None)
        return Score(ord(completion[0]) % 2 == 0, completion[0])


register_task("parity")(lambda argument, options: ParityTask(answers=argument != "silent"))

SETTINGS = EvalSettings(model="tiny-llama", heads="tiny-heads", heads_sha256=None, chat=False, max_new_tokens=4, seed=0, dtype="torch.float32")


def plan(strategies="greedy,default,static:0.5,0.9,mean,autodeco", task="parity", **options):
    return EvalPlan(tasks=[load_task(task)], strategies=parse_strategies(strategies), samples=3, batch_size=4, **options)


def without_timing(results):
    return {task: {s: {k: v for k, v in m.items() if k != "tokens_per_s"} for s, m in by.items()} for task, by in results.items()}


def test_results_have_the_documented_shape(make_model, tokenizer, tmp_path):
    results = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan())
    metrics = results["parity"]
    assert list(metrics) == ["greedy", "default", "static:0.5,0.9", "mean", "autodeco"]
    for label, m in metrics.items():
        assert {"pass@1", "stderr", "pass@k", "n_problems", "samples", "mean_temperature", "mean_top_p", "tokens_per_s", "params"} <= set(m)
        assert m["n_problems"] == 6 and 0.0 <= m["pass@1"] <= 1.0
    assert metrics["greedy"]["samples"] == 1 and metrics["default"]["samples"] == 3
    assert metrics["static:0.5,0.9"]["mean_temperature"] == pytest.approx(0.5)
    records = [json.loads(line) for line in (tmp_path / SAMPLES_NAME).read_text().splitlines()]
    autodeco = [r for r in records if r["decoding"].startswith("autodeco@heads:")]
    assert len(autodeco) == 18 and all(len(r["temperatures"]) == len(r["token_ids"]) == len(r["pieces"]) for r in autodeco)
    mean_t = sum(t for r in autodeco for t in r["temperatures"]) / sum(len(r["temperatures"]) for r in autodeco)
    assert metrics["mean"]["params"]["temperature"] == pytest.approx(round(mean_t, 3))
    assert metrics["mean"]["mean_temperature"] == pytest.approx(round(mean_t, 3))
    # every strategy used the same seed for a given (problem, sample)
    seeds = {(r["problem"], r["sample"]): r["seed"] for r in autodeco}
    assert all(seeds[(r["problem"], r["sample"])] == r["seed"] for r in records)


def test_oracle_sweeps_t_then_p_and_is_flagged(make_model, tokenizer, tmp_path):
    oracle = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(
        plan("oracle", oracle_temperatures=(0.3, 1.5), oracle_top_ps=(0.5, 1.0))
    )["parity"]["oracle"]
    sweep = oracle["params"]["sweep"]
    assert set(sweep) == {"static:0.3,1", "static:1.5,1", f"static:{oracle['params']['temperature']:g},0.5"}
    best_t = max((0.3, 1.5), key=lambda t: sweep[f"static:{t:g},1"])
    assert oracle["params"]["temperature"] == best_t and oracle["params"]["tuned_on_test_set"] is True
    assert oracle["pass@1"] == max(sweep[f"static:{best_t:g},{p:g}"] for p in (0.5, 1.0))


def test_completions_without_an_answer_are_counted_wrong(make_model, tokenizer, tmp_path):
    metrics = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("default", task="parity:silent"))["parity:silent"]["default"]
    assert metrics["pass@1"] == 0.0 and metrics["no_answer"] == 18


def test_an_interrupted_run_resumes_to_the_same_results_without_duplicates(make_model, tokenizer, tmp_path, monkeypatch):
    fresh = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path / "fresh").run(plan())
    calls = {"n": 0}
    real_generate = runner_module.generate

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(make_model(), tokenizer, SETTINGS, tmp_path / "resumed").run(plan())
    with (tmp_path / "resumed" / SAMPLES_NAME).open("a") as handle:
        handle.write('{"task": "parity", "decoding": "gre')  # a write cut short by the crash
    monkeypatch.setattr(runner_module, "generate", real_generate)
    resumed = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path / "resumed").run(plan())
    assert without_timing(resumed) == without_timing(fresh)
    lines = (tmp_path / "resumed" / SAMPLES_NAME).read_text().splitlines()
    keys = [SampleStore.key(json.loads(line)) for line in lines]
    assert len(keys) == len(set(keys)) == 6 + 18 * 4  # greedy 6; default, static, autodeco and mean 18 each


def test_resuming_with_other_settings_is_refused(make_model, tokenizer, tmp_path):
    Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("greedy"))
    changed = EvalSettings(**{**SETTINGS.__dict__, "max_new_tokens": 9})
    with pytest.raises(AutoDecoError, match=r"max_new_tokens: 4 then, 9 now.*use a new --out"):
        Evaluator(make_model(), tokenizer, changed, tmp_path)


def test_strategies_that_need_heads_are_refused_without_them(make_model, tokenizer, tmp_path):
    no_heads = EvalSettings(**{**SETTINGS.__dict__, "heads": None})
    with pytest.raises(AutoDecoError, match="autodeco and mean need the learned T and P: pass --heads"):
        Evaluator(make_model(), tokenizer, no_heads, tmp_path).run(plan("greedy,mean"))


def test_samples_made_from_another_prompt_are_made_again(make_model, tokenizer, tmp_path, monkeypatch):
    Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("greedy"))
    monkeypatch.setattr(ParityTask, "prompt", lambda self, problem, chat: f"Count again. {problem.question}")
    calls = []
    real_generate = runner_module.generate
    monkeypatch.setattr(runner_module, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("greedy"))
    assert len(calls) == 2  # both batches of 4 and 2 problems again
    Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("greedy"))
    assert len(calls) == 2  # and now they are on disk


def test_new_heads_reuse_the_baselines_and_redo_only_what_reads_the_heads(make_model, tokenizer, tmp_path, monkeypatch):
    first = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(plan("greedy,default,autodeco"))["parity"]
    calls = []
    real_generate = runner_module.generate
    monkeypatch.setattr(runner_module, "generate", lambda *a, **k: calls.append(k or a[3]) or real_generate(*a, **k))
    other_heads = EvalSettings(**{**SETTINGS.__dict__, "heads": "other-heads", "heads_sha256": "f" * 64})
    second = Evaluator(make_model(seed=5), tokenizer, other_heads, tmp_path).run(plan("greedy,default,autodeco"))["parity"]
    assert len(calls) == 5 and all(p.decoding == "autodeco" for params in calls for p in params)  # 18 samples in batches of 4
    assert without_timing({"t": {k: first[k] for k in ("greedy", "default")}}) == without_timing({"t": {k: second[k] for k in ("greedy", "default")}})
    assert second["autodeco"]["mean_temperature"] != first["autodeco"]["mean_temperature"]
    keys = {json.loads(line)["decoding"] for line in (tmp_path / SAMPLES_NAME).read_text().splitlines()}
    assert keys == {"greedy", "static:1,1", f"autodeco@heads:{SETTINGS.heads_id}", "autodeco@heads:ffffffffffff"}
