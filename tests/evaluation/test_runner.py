"""The runner on a tiny random model: results shape, paired comparisons, oracle (on test and on dev)
and mean, resume, bad settings."""

import json

import pytest

from autodeco.engine import Completion, TokenTrace
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


class SplitTask(Task):
    """A task with a dev split: six problems per split, prompts that say which split they are from;
    a completion is right when it reads "right"."""

    def __init__(self, split: str) -> None:
        self.split = split

    def problems(self):
        return [Problem(f"{self.split}{i}", f"Question {i}", None) for i in range(6)]

    def prompt(self, problem, chat):
        return f"{self.split}: {problem.question}"

    def score(self, problem, completion):
        return Score(completion == "right", completion)

    def dev_task(self):
        if self.split == "dev":
            return None
        dev = SplitTask("dev")
        dev.name = f"{self.name},split=dev"
        return dev


register_task("splitty")(lambda argument, options: SplitTask("test"))


def fake_generate(calls, right):
    """A stand-in for engine.generate: "right" where ``right(split, temperature, top_p)``, else "wrong";
    each call's (split, temperature, top_p) per row go to ``calls``."""

    def generate(model, tokenizer, prompts, params):
        rows = [(prompt.partition(":")[0], p.temperature, p.top_p) for prompt, p in zip(prompts, params)]
        calls.extend(rows)
        texts = ["right" if right(*row) else "wrong" for row in rows]
        return [Completion(text, [TokenTrace(7, text, p.temperature, p.top_p)], "stop", 3) for text, p in zip(texts, params)]

    return generate

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
    # each strategy but the baseline (autodeco, the default) is compared with it problem by problem
    assert "paired" not in metrics["autodeco"]
    for label in ("greedy", "default", "static:0.5,0.9", "mean"):
        paired = metrics[label]["paired"]
        assert paired["baseline"] == "autodeco" and paired["n"] == 6
        for name in ("pass@1", "majority"):
            assert set(paired[name]) == {"diff", "stderr", "z", "ci95", "wins", "ties", "losses"}
            assert paired[name]["diff"] == pytest.approx(metrics[label][name] - metrics["autodeco"][name])  # the same problems
            assert paired[name]["wins"] + paired[name]["ties"] + paired[name]["losses"] == 6
            assert paired[name]["ci95"][0] <= paired[name]["diff"] <= paired[name]["ci95"][1]
    assert metrics["greedy"]["majority"] == metrics["greedy"]["pass@1"]


def test_oracle_sweeps_t_then_p_and_is_flagged(make_model, tokenizer, tmp_path):
    oracle = Evaluator(make_model(), tokenizer, SETTINGS, tmp_path).run(
        plan("oracle", oracle_temperatures=(0.3, 1.5), oracle_top_ps=(0.5, 1.0))
    )["parity"]["oracle"]
    sweep = oracle["params"]["sweep"]
    assert set(sweep) == {"static:0.3,1", "static:1.5,1", f"static:{oracle['params']['temperature']:g},0.5"}
    best_t = max((0.3, 1.5), key=lambda t: sweep[f"static:{t:g},1"])
    assert oracle["params"]["temperature"] == best_t and oracle["params"]["tuned_on"] == "test"
    assert oracle["pass@1"] == max(sweep[f"static:{best_t:g},{p:g}"] for p in (0.5, 1.0))


def test_oracle_dev_tunes_on_dev_problems_only_and_then_measures_on_test(tmp_path, monkeypatch):
    # dev favours T=0.3 (any P), test favours T=1.5 at P=1: each oracle must find its own split's setting
    calls = []
    monkeypatch.setattr(runner_module, "generate", fake_generate(calls, lambda split, t, p: t == 0.3 if split == "dev" else (t, p) == (1.5, 1.0)))
    grid = {"oracle_temperatures": (0.3, 1.5), "oracle_top_ps": (0.5, 1.0)}
    results = Evaluator(None, None, SETTINGS, tmp_path).run(plan("oracle-dev", task="splitty", oracle_dev_limit=4, **grid))["splitty"]
    tuned = results["oracle-dev"]
    params = tuned["params"]
    assert (params["temperature"], params["top_p"]) == (0.3, 0.5)  # first best P on the dev tie
    assert params["tuned_on"] == "dev" and params["dev_task"] == "splitty,split=dev" and params["dev_problems"] == 4
    assert params["sweep"] == {"static:0.3,1": 1.0, "static:1.5,1": 0.0, "static:0.3,0.5": 1.0}  # the dev pass@1
    assert params["grid"] == {"temperature": [0.3, 1.5], "top_p": [0.5, 1.0]}
    assert tuned["pass@1"] == 0.0 and tuned["n_problems"] == 6  # measured on the test problems, where dev's choice is wrong
    # tuning generated on the first 4 dev problems only; the test problems saw just the chosen decoding
    assert {(t, p) for split, t, p in calls if split == "test"} == {(0.3, 0.5)} and sum(split == "test" for split, _, _ in calls) == 18
    assert sum(split == "dev" for split, _, _ in calls) == 3 * 4 * 3
    stored = {(r["task"], r["problem"]) for r in map(json.loads, (tmp_path / SAMPLES_NAME).read_text().splitlines())}
    assert {problem for task, problem in stored if task == "splitty,split=dev"} == {"dev0", "dev1", "dev2", "dev3"}
    # the test-set oracle finds the test's setting; with it as the baseline, oracle-dev loses every problem
    both = Evaluator(None, None, SETTINGS, tmp_path).run(plan("oracle,oracle-dev", task="splitty", oracle_dev_limit=4, **grid))["splitty"]
    assert (both["oracle"]["params"]["temperature"], both["oracle"]["params"]["top_p"]) == (1.5, 1.0) and both["oracle"]["pass@1"] == 1.0
    assert both["oracle"]["params"]["tuned_on"] == "test" and both["oracle-dev"]["params"] == params
    paired = both["oracle-dev"]["paired"]
    assert paired["baseline"] == "oracle" and paired["pass@1"]["diff"] == -1.0 and paired["pass@1"]["losses"] == 6


def test_plans_that_cannot_run_are_refused_when_made():
    with pytest.raises(AutoDecoError, match=r"--baseline 'beam' is not among the strategies; choose one of: greedy, default$"):
        plan("greedy,default", baseline="beam")
    with pytest.raises(AutoDecoError, match=r"task 'parity' has no dev split .*oracle-dev needs one .*drop oracle-dev or use oracle"):
        plan("greedy,oracle-dev")
    assert plan("greedy,default").baseline == "greedy" and plan("greedy,autodeco").baseline == "autodeco"


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
    baselines = [without_timing({"t": {k: {**run[k], "paired": None} for k in ("greedy", "default")}}) for run in (first, second)]
    assert baselines[0] == baselines[1]  # the same samples (their comparison with autodeco may change)
    assert second["autodeco"]["mean_temperature"] != first["autodeco"]["mean_temperature"]
    keys = {json.loads(line)["decoding"] for line in (tmp_path / SAMPLES_NAME).read_text().splitlines()}
    assert keys == {"greedy", "static:1,1", f"autodeco@heads:{SETTINGS.heads_id}", "autodeco@heads:ffffffffffff"}
