"""Tasks: loaders, prompts, answer extraction and verifiers against known right and wrong answers."""

import pytest

from autodeco.errors import AutoDecoError
from autodeco.evaluation import tasks as registry
from autodeco.evaluation.sandbox import run_python
from autodeco.evaluation.tasks import Problem, load_task, parse_task_spec
from autodeco.evaluation.tasks.answers import extract_answer, last_boxed, math_match, numeric_match, verifier
from autodeco.evaluation.tasks.reasoning_gym import DEV_SEED, split_of
from autodeco.evaluation.tasks.worked import worked_answer

EASY_ARITHMETIC = "reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1,size=200"


@pytest.mark.parametrize(
    "text, expected",
    [
        (" 7\n", "7"),
        ("so we get \\boxed{\\frac{1}{2}} and then \\boxed{3}.", "3"),
        ("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),
        ("Let me think. The answer is 42.", "42"),
        ("Final answer: $-5$", "-5"),
        ("\n\n  first line\nsecond", "first line"),
        ("   \n ", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_with_unbalanced_braces_gives_none():
    assert last_boxed("\\boxed{1 + {2}") is None


@pytest.mark.parametrize(
    "name, answer, reference, verdict",
    [
        ("exact", "  Paris ", "paris", True), ("exact", "Paris, France", "Paris", False),
        ("numeric", "1,234.0", "1234", True), ("numeric", "x = -3", "-3", True), ("numeric", "3.1", "3", False),
        ("numeric", "no digits", "3", False),
        ("math", "\\frac{1}{2}", "0.5", True), ("math", "\\sqrt{4}", "2", True), ("math", "x^2", "x^3", False),
        ("math", "(1, 2]", "(1,2]", True),
        ("regex", "the year 1969 it was", r"\b19\d\d\b", True), ("regex", "1869", r"\b19\d\d\b", False),
    ],
)
def test_verifiers_on_known_right_and_wrong_answers(name, answer, reference, verdict):
    assert verifier(name)(answer, reference) is verdict


def test_unknown_verifier_lists_the_valid_ones():
    with pytest.raises(AutoDecoError, match="exact, numeric, math, regex"):
        verifier("fuzzy")


def test_math_and_numeric_match_reject_empty():
    assert not math_match("", "1") and not numeric_match("", "1")


def test_task_spec_parsing_and_errors():
    assert parse_task_spec("reasoning_gym:chain_sum,min_terms=2, seed=5") == ("reasoning_gym", "chain_sum", {"min_terms": "2", "seed": "5"})
    with pytest.raises(AutoDecoError, match="task families are: .*humaneval.*reasoning_gym"):
        load_task("mmlu")
    with pytest.raises(AutoDecoError, match="not key=value"):
        load_task("reasoning_gym:chain_sum,oops")
    with pytest.raises(AutoDecoError, match="has no dataset 'chain_summ'; it has: .*chain_sum"):
        load_task("reasoning_gym:chain_summ")
    with pytest.raises(AutoDecoError, match="unknown option.*colour.*valid options: memory_mb, timeout"):
        load_task("humaneval,colour=red")
    with pytest.raises(AutoDecoError, match="cannot build 'chain_sum'"):
        load_task("reasoning_gym:chain_sum,bogus=3").problems()


def test_missing_task_package_names_the_extra(monkeypatch):
    real = registry.importlib.import_module

    def fake(name, *args):
        if name == "reasoning_gym":
            raise ImportError("No module named 'reasoning_gym'")
        return real(name, *args)

    monkeypatch.setattr(registry.importlib, "import_module", fake)
    with pytest.raises(AutoDecoError, match=r"reasoning-gym, which is not installed; run: pip install 'autodeco\[eval\]'"):
        registry.require("reasoning_gym", "reasoning-gym")


def test_reasoning_gym_scores_the_reference_right_and_other_answers_wrong():
    task = load_task(EASY_ARITHMETIC)
    problems = task.problems()
    assert 50 < len(problems) < 200 and problems == load_task(EASY_ARITHMETIC).problems()  # deterministic
    assert len({p.question for p in problems}) == len(problems) and all(split_of(p.question) == "test" for p in problems)
    for problem in problems[:20]:
        right = str(problem.reference["answer"])
        assert task.score(problem, f" {right}\n").correct
        assert not task.score(problem, f" {int(float(right)) + 1}").correct
    assert task.score(problems[0], "   ").answer is None


def test_reasoning_gym_train_dev_and_test_splits_and_shots_never_share_a_question():
    # a space of ~200 questions: any two seeds draw overlapping sets, the split keeps them apart
    chain_sum = "reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
    test_sums = {p.question for p in load_task(chain_sum + ",size=3000").problems()}
    dev_sums = {p.question for p in load_task(chain_sum + ",split=dev,seed=5,size=3000").problems()}
    train_sums = {p.question for p in load_task(chain_sum + ",split=train,seed=5,size=3000").problems()}
    assert len(test_sums) > 50 and len(dev_sums) > 20 and len(train_sums) > 30
    assert not test_sums & train_sums and not test_sums & dev_sums and not dev_sums & train_sums
    assert len(dev_sums) < len(train_sums) < len(test_sums)  # 3/16, 5/16 and 1/2 of the space
    test = {p.question for p in load_task(EASY_ARITHMETIC).problems()}
    task = load_task(EASY_ARITHMETIC + ",split=train")
    train = task.problems()
    assert train and not test & {p.question for p in train}
    shots = load_task(EASY_ARITHMETIC).few_shots
    assert len(shots) == 3 and not test & {q for q, _ in shots}
    prompt = load_task(EASY_ARITHMETIC).prompt(train[0], chat=False)
    assert prompt.endswith(f"Question: {train[0].question}\nAnswer:") and prompt.count("Question:") == 4
    assert load_task(EASY_ARITHMETIC).stop(chat=False) == ("\n",)
    assert task.prompt(train[0], chat=True)[0]["role"] == "user"


def test_reasoning_gym_dev_task_is_the_same_configuration_on_dev_with_the_dev_seed():
    test = load_task(EASY_ARITHMETIC + ",seed=5")  # a seed chosen for the test split is not the dev split's
    dev = test.dev_task()
    assert dev.name == EASY_ARITHMETIC + ",split=dev" and (dev.split, dev.seed, dev.config, dev.size) == ("dev", DEV_SEED, test.config, 200)
    problems = dev.problems()
    assert problems and all(split_of(p.question) == "dev" for p in problems)
    assert not {p.question for p in problems} & {p.question for p in test.problems()}
    assert load_task(dev.name).problems() == problems  # its name loads it again
    assert load_task(EASY_ARITHMETIC + ",split=train").dev_task().name == EASY_ARITHMETIC + ",split=dev"
    assert dev.dev_task() is None and load_task("jsonl:none.jsonl").dev_task() is None  # the dev split, and tasks without one


def test_mmath_subsets_and_verification():
    assert len(load_task("mmath").problems()) == 374
    math500 = load_task("mmath:math500").problems()
    assert len(math500) == 311 and len(load_task("mmath:aime").problems()) == 45
    task = load_task("mmath:math500")
    problem = math500[0]
    assert task.score(problem, f"We compute it. The answer is $\\boxed{{{problem.reference}}}$.").correct
    assert not task.score(problem, "The answer is $\\boxed{123456789}$.").correct
    assert task.score(problem, "I do not know.").answer is None  # no box: no answer, scored wrong
    with pytest.raises(AutoDecoError, match="subset 'gsm8k' is unknown"):
        load_task("mmath:gsm8k")
    assert task.prompt(problem, chat=False).endswith(f"Problem: {problem.question}\nSolution:")


def test_ifeval_strict_and_loose_with_offline_tokenizers():
    task = load_task("ifeval")
    problems = {p.id: p for p in task.problems()}
    assert len(problems) == 541
    no_comma, lowercase = problems["1162"], problems["1593"]
    assert task.score(no_comma, "What has wings but never flies. A kite on a string").correct
    assert not task.score(no_comma, "Wings, but no flight: a kite.").correct
    assert task.score(lowercase, "barnet my friend\nyou shine like the sun").correct
    assert not task.score(lowercase, "Barnet My Friend").correct
    loose = task.score(lowercase, "Here Is A Poem:\nbarnet my friend\nyou shine like the sun")
    assert not loose.correct and loose.extras["loose"] == 1.0  # loose drops the first line
    sentences = next(p for p in problems.values() if "length_constraints:number_sentences" in p.reference.instruction_id_list)
    task.score(sentences, "One sentence here. Another one there. And a third.")  # the punkt stand-in runs
    assert task.open_ended


def test_humaneval_runs_tests_in_a_sandbox():
    task = load_task("humaneval,timeout=3")
    problems = task.problems()
    assert len(problems) == 164
    first = problems[0]
    assert task.score(first, first.reference["canonical_solution"]).correct
    assert not task.score(first, "    return False\n").correct
    chat_reply = f"Sure:\n```python\n{first.question}{first.reference['canonical_solution']}```"
    assert task.score(first, chat_reply).correct


def test_sandbox_kills_loops_and_memory_hogs():
    assert run_python("print('hi')").passed
    assert run_python("while True:\n    pass\n", timeout_s=1.5).reason == "timeout"
    assert run_python("x = bytearray(4 * 1024 ** 3)\n", memory_mb=256).reason == "memory"
    assert run_python("raise SystemExit(3)").reason == "failed"
    assert run_python("import os, sys\nassert os.path.basename(os.getcwd()).startswith('autodeco-exec-') and sys.flags.isolated == 1").passed


def test_jsonl_task_verifies_and_names_bad_lines(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "2+2=", "answer": 4}\n\n{"prompt": "Capital of France?", "answer": "Paris", "id": "fr"}\n')
    task = load_task(f"jsonl:{path},verifier=exact")
    first, second = task.problems()
    assert (first.id, second.id) == ("1", "fr")
    assert task.score(second, "paris").correct and not task.score(second, "Lyon").correct
    numeric = load_task(f"jsonl:{path}")
    assert numeric.score(first, "The answer is 4.").correct
    for text, message in (
        ('{"prompt": "a", "answer": 1}\n{"prompt": "b", answer: 2}\n', r"mine.jsonl:2: not valid JSON"),
        ('{"prompt": "", "answer": 1}\n', r"mine.jsonl:1: needs a non-empty string \"prompt\""),
        ('{"prompt": "a"}\n', r"mine.jsonl:1: needs an \"answer\""),
        ('{"prompt": "a", "answer": 1, "id": 1}\n{"prompt": "b", "answer": 1, "id": 1}\n', "id '1' appears twice"),
    ):
        path.write_text(text)
        with pytest.raises(AutoDecoError, match=message):
            load_task(f"jsonl:{path}").problems()
    with pytest.raises(AutoDecoError, match="does not exist"):
        load_task(f"jsonl:{tmp_path / 'none.jsonl'}").problems()


@pytest.mark.parametrize("spec", [
    "reasoning_gym:chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=2,worked=true,size=300",
    "reasoning_gym:letter_counting,min_words=1,max_words=4,worked=true,size=300",
])
def test_worked_few_shot_answers_show_the_steps_and_score_as_their_answer(spec):
    task = load_task(spec)
    assert task.few_shots and all(" = " in answer and answer.count("The answer is") == 1 for _, answer in task.few_shots)
    for entry in task._dataset(task.seed):  # every worked line ends in the dataset's own answer, and scores right
        line = worked_answer(task.dataset_name, entry)
        assert line.endswith(f"The answer is {entry['answer']}")
        assert task.score(Problem("x", entry["question"], entry), " " + line).correct
    assert "\n" not in "".join(answer for _, answer in task.few_shots)  # one line: the stop string ends the answer
    plain = load_task(spec.replace("worked=true", "worked=false"))
    assert [q for q, _ in plain.few_shots] == [q for q, _ in task.few_shots] and plain.few_shots != task.few_shots


def test_worked_answers_are_refused_where_there_is_no_formatter_or_the_value_is_not_a_boolean():
    with pytest.raises(AutoDecoError, match="worked answers for chain_sum, letter_counting only, not 'gcd'"):
        load_task("reasoning_gym:gcd,worked=true")
    with pytest.raises(AutoDecoError, match="write worked=true or worked=false"):
        load_task("reasoning_gym:chain_sum,worked=maybe")
