"""Metrics against closed forms and hand-computed values, and the strategy grammar."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autodeco.errors import AutoDecoError
from autodeco.evaluation.metrics import (
    bootstrap_interval, distinct_n, ks_for, majority_correct, mean_and_stderr, paired_comparison, paired_difference, pass_at_k,
    summarise,
)
from autodeco.evaluation.strategies import parse_grid, parse_strategies, resolve_baseline


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_the_closed_form(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_edges_and_bad_input():
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6]


def record(problem, correct, tokens=(1, 2, 3), answered=True, temperatures=None, seconds=0.5, extras=None, answer=None):
    """A sample record; its answer is ``answer``, else "right"/"wrong" as it is correct, or None when not ``answered``."""
    answer = answer or (("right" if correct else "wrong") if answered else None)
    return {"problem": problem, "correct": correct, "answer": answer, "answered": answer is not None, "token_ids": list(tokens),
            "temperatures": temperatures or [0.5] * len(tokens), "top_ps": [0.9] * len(tokens), "seconds": seconds, "extras": extras or {}}


def votes(*answers):
    """One problem's records from (answer, correct) pairs, in sample order."""
    return [record("p", correct, answer=answer, answered=answer is not None) for answer, correct in answers]


def test_summarise_pass_at_1_and_its_standard_error_over_problems():
    records = [record("a", True), record("a", False), record("b", False), record("b", False, answered=False),
               record("c", True), record("c", True)]
    summary = summarise(records, open_ended=True)
    shares = [0.5, 0.0, 1.0]
    mean = sum(shares) / 3
    stderr = math.sqrt(sum((s - mean) ** 2 for s in shares) / 2) / math.sqrt(3)
    assert summary["pass@1"] == pytest.approx(mean) and summary["stderr"] == pytest.approx(stderr)
    assert summary["pass@k"][2] == pytest.approx((pass_at_k(2, 1, 2) + 0 + 1) / 3)
    assert (summary["n_problems"], summary["samples"], summary["no_answer"]) == (3, 2, 1)
    assert summary["mean_temperature"] == pytest.approx(0.5) and summary["std_temperature"] == pytest.approx(0.0)
    assert summary["tokens_per_s"] == pytest.approx(18 / 3.0) and summary["mean_length"] == 3
    assert summary["distinct_1"] == pytest.approx(3 / 18) and summary["distinct_2"] == pytest.approx(2 / 12)
    # majority: a's tie goes to its first answer (right), b's one vote is wrong, c is right
    assert summary["majority"] == pytest.approx(2 / 3) and summary["majority_stderr"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))


def test_majority_vote_counts_normalised_answers_and_breaks_ties_by_the_first_seen():
    assert majority_correct(votes(("12", False), ("7", True), (" 7", True), ("12", False), ("7\n", True)))  # 7 wins 3-2
    assert not majority_correct(votes(("7", True), ("12", False), ("12 ", False)))
    assert majority_correct(votes(("Paris", False), (" PARIS ", False), ("paris", True), ("Lyon", False)))  # any right record of the winner
    assert majority_correct(votes(("new  york", True), ("New York", True), ("Boston", False)))  # whitespace runs collapse
    assert not majority_correct(votes(("a", False), ("b", True), ("b", True), ("a", False)))  # 2-2: a was seen first
    assert majority_correct(votes(("b", True), ("a", False), ("a", False), ("b", True)))


def test_majority_vote_ignores_missing_answers_and_is_wrong_without_votes():
    assert majority_correct(votes((None, False), (None, False), ("x", True)))  # two non-votes do not outvote one answer
    assert not majority_correct(votes((None, False), (None, False)))
    assert majority_correct(votes(("x", True))) and not majority_correct(votes(("y", False)))  # one sample: its own verdict
    greedy = [record(p, correct) for p, correct in (("a", True), ("b", False), ("c", True))]
    assert summarise(greedy)["majority"] == summarise(greedy)["pass@1"]


def two_strategies():
    """Records of a strategy and a baseline on problems p1-p4 (the baseline also ran p5), 2 samples each."""
    ours = {"p1": (True, True), "p2": (True, False), "p3": (False, False), "p4": (True, True)}
    theirs = {"p1": (True, False), "p2": (False, True), "p3": (True, False), "p4": (False, False), "p5": (True, True)}
    return ([record(p, c) for p, cs in ours.items() for c in cs], [record(p, c) for p, cs in theirs.items() for c in cs])


def test_paired_differences_equal_hand_computed_values():
    ours, theirs = two_strategies()
    paired = paired_comparison(ours, theirs, "base")
    assert paired["baseline"] == "base" and paired["n"] == 4  # p5 only ran in the baseline
    # pass@1 shares: 1, .5, 0, 1 against .5, .5, .5, 0 -> differences .5, 0, -.5, 1
    sd = math.sqrt(((0.25 ** 2) * 2 + (0.75 ** 2) * 2) / 3)
    p1 = paired["pass@1"]
    assert p1["diff"] == pytest.approx(0.25) and p1["stderr"] == pytest.approx(sd / 2) and p1["z"] == pytest.approx(0.25 / (sd / 2))
    assert (p1["wins"], p1["ties"], p1["losses"]) == (2, 1, 1)
    assert p1["ci95"][0] <= 0.25 <= p1["ci95"][1] and -0.5 <= p1["ci95"][0] and p1["ci95"][1] <= 1.0
    # majority (ties to the first answer): 1, 1, 0, 1 against 1, 0, 1, 0 -> differences 0, 1, -1, 1
    majority = paired["majority"]
    assert majority["diff"] == pytest.approx(0.25) and (majority["wins"], majority["ties"], majority["losses"]) == (2, 1, 1)
    assert majority["stderr"] == pytest.approx(np.std([0, 1, -1, 1], ddof=1) / 2)


def test_equal_strategies_differ_by_zero_with_no_z():
    same = paired_difference({"a": 0.5, "b": 1.0}, {"a": 0.5, "b": 1.0})
    assert same == {"diff": 0.0, "stderr": 0.0, "z": None, "ci95": [0.0, 0.0], "wins": 0, "ties": 2, "losses": 0}
    with pytest.raises(ValueError, match="share no problem"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_bootstrap_interval_is_reproducible_contains_the_mean_and_shrinks_with_more_problems():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.1, 0.5, 25), rng.normal(0.1, 0.5, 2500)
    low, high = bootstrap_interval(few)
    assert (low, high) == bootstrap_interval(few) and low < few.mean() < high
    many_low, many_high = bootstrap_interval(many)
    assert many_low < many.mean() < many_high and many_high - many_low < (high - low) / 5  # ~ 1/sqrt(100)
    _, stderr = mean_and_stderr(list(many))
    assert (many_high - many_low) == pytest.approx(2 * 1.96 * stderr, rel=0.05)  # the normal interval, for a large n
    assert bootstrap_interval(few, seed=2) != (low, high)  # the seed is what makes it reproducible


def test_paired_standard_error_is_smaller_than_unpaired_when_strategies_are_correlated():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 200)  # problems vary far more than the strategies do
    ours = {str(i): float(np.clip(d + rng.normal(0.05, 0.05), 0, 1)) for i, d in enumerate(difficulty)}
    theirs = {str(i): float(d) for i, d in enumerate(difficulty)}
    unpaired = math.hypot(mean_and_stderr(list(ours.values()))[1], mean_and_stderr(list(theirs.values()))[1])
    paired = paired_difference(ours, theirs)
    assert paired["stderr"] < unpaired / 4 and paired["z"] > 5


def test_summarise_averages_task_extras_like_pass_at_1():
    records = [record("a", False, extras={"loose": 1.0}), record("b", False, extras={"loose": 0.0})]
    summary = summarise(records)
    assert summary["loose"] == 0.5 and summary["loose_stderr"] == pytest.approx(0.5)
    assert "distinct_2" not in summary


def test_distinct_n():
    assert distinct_n([[1, 1, 1, 1]], 1) == 0.25 and distinct_n([[1, 2], [3]], 2) == 1.0 and distinct_n([], 2) == 0.0


def test_strategy_grammar_keeps_argument_commas_and_shares_equal_decodings():
    parsed = parse_strategies("greedy,default,static:1,1,static:0.6,0.95,min_p:0.1,dynatemp:0.3,1.2,2,oracle,oracle-dev,mean,autodeco:t_max=1.2,top_p_scale=0.9,autodeco")
    labels = [s.label for s in parsed]
    assert labels == ["greedy", "default", "static:1,1", "static:0.6,0.95", "min_p:0.1", "dynatemp:0.3,1.2,2", "oracle", "oracle-dev", "mean",
                      "autodeco:t_max=1.2,top_p_scale=0.9", "autodeco"]
    by_label = {s.label: s for s in parsed}
    assert by_label["default"].decoding.key == by_label["static:1,1"].decoding.key  # one run, shared samples
    assert by_label["greedy"].decoding.deterministic and not by_label["default"].decoding.deterministic
    assert by_label["min_p:0.1"].decoding.params.min_p == 0.1
    assert by_label["dynatemp:0.3,1.2,2"].decoding.params.dynatemp_exponent == 2.0
    assert by_label["autodeco:t_max=1.2,top_p_scale=0.9"].decoding.params.top_p_scale == 0.9
    assert by_label["mean"].uses_heads and not by_label["oracle"].uses_heads and by_label["oracle"].decoding is None
    assert by_label["oracle-dev"].kind == "oracle-dev" and by_label["oracle-dev"].decoding is None and not by_label["oracle-dev"].uses_heads
    assert parse_strategies("static:0,1")[0].decoding.deterministic


@pytest.mark.parametrize(
    "text, message",
    [
        ("beam", "unknown strategy 'beam'; strategies are: greedy, default, static"),
        ("greedy,beam:4", "unknown strategy 'beam'; strategies are"),  # not an argument of greedy
        ("autodeco,gredy", "unknown strategy 'gredy'; strategies are: .*; did you mean 'greedy'\\?"),
        ("static", "write static:T or static:T,P"),
        ("static:hot", "'hot' is not a number"),
        ("static:0.7,1.5", "top_p=1.5 must lie in"),
        ("greedy:1", "takes no arguments"),
        ("autodeco:scale=2", "is not one of temperature_scale=VALUE"),
        ("dynatemp:0.3", "dynatemp:LOW,HIGH"),
        ("oracle:3", "set the oracle's grids with --oracle-temperatures"),
        ("oracle-dev:0.5", "strategy 'oracle-dev' takes no arguments"),
        ("", "no strategies given"),
    ],
)
def test_bad_strategies_name_the_problem(text, message):
    with pytest.raises(AutoDecoError, match=message):
        parse_strategies(text)


def test_the_baseline_is_autodeco_if_listed_else_the_first_and_must_be_a_strategy():
    assert resolve_baseline(parse_strategies("greedy,default,autodeco"), None) == "autodeco"
    assert resolve_baseline(parse_strategies("default,autodeco:t_max=1"), None) == "default"
    assert resolve_baseline(parse_strategies("greedy,static:0.6,0.95"), "static:0.6,0.95") == "static:0.6,0.95"
    assert resolve_baseline([], None) is None  # a plan that only samples (sample-data)
    with pytest.raises(AutoDecoError, match=r"--baseline 'oracle' is not among the strategies; choose one of: greedy, default$"):
        resolve_baseline(parse_strategies("greedy,default"), "oracle")


def test_grids():
    assert parse_grid("1.0, 0.2,0.2", "--oracle-temperatures") == (0.2, 1.0)
    with pytest.raises(AutoDecoError, match="--oracle-top-ps is empty"):
        parse_grid(" , ", "--oracle-top-ps")
