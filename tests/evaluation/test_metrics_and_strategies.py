"""Metrics against closed forms, and the strategy grammar."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autodeco.errors import AutoDecoError
from autodeco.evaluation.metrics import distinct_n, ks_for, pass_at_k, summarise
from autodeco.evaluation.strategies import parse_grid, parse_strategies


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_the_closed_form(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_edges_and_bad_input():
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6]


def record(problem, correct, tokens=(1, 2, 3), answered=True, temperatures=None, seconds=0.5, extras=None):
    return {"problem": problem, "correct": correct, "answered": answered, "token_ids": list(tokens),
            "temperatures": temperatures or [0.5] * len(tokens), "top_ps": [0.9] * len(tokens), "seconds": seconds, "extras": extras or {}}


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


def test_summarise_averages_task_extras_like_pass_at_1():
    records = [record("a", False, extras={"loose": 1.0}), record("b", False, extras={"loose": 0.0})]
    summary = summarise(records)
    assert summary["loose"] == 0.5 and summary["loose_stderr"] == pytest.approx(0.5)
    assert "distinct_2" not in summary


def test_distinct_n():
    assert distinct_n([[1, 1, 1, 1]], 1) == 0.25 and distinct_n([[1, 2], [3]], 2) == 1.0 and distinct_n([], 2) == 0.0


def test_strategy_grammar_keeps_argument_commas_and_shares_equal_decodings():
    parsed = parse_strategies("greedy,default,static:1,1,static:0.6,0.95,min_p:0.1,dynatemp:0.3,1.2,2,oracle,mean,autodeco:t_max=1.2,top_p_scale=0.9,autodeco")
    labels = [s.label for s in parsed]
    assert labels == ["greedy", "default", "static:1,1", "static:0.6,0.95", "min_p:0.1", "dynatemp:0.3,1.2,2", "oracle", "mean",
                      "autodeco:t_max=1.2,top_p_scale=0.9", "autodeco"]
    by_label = {s.label: s for s in parsed}
    assert by_label["default"].decoding.key == by_label["static:1,1"].decoding.key  # one run, shared samples
    assert by_label["greedy"].decoding.deterministic and not by_label["default"].decoding.deterministic
    assert by_label["min_p:0.1"].decoding.params.min_p == 0.1
    assert by_label["dynatemp:0.3,1.2,2"].decoding.params.dynatemp_exponent == 2.0
    assert by_label["autodeco:t_max=1.2,top_p_scale=0.9"].decoding.params.top_p_scale == 0.9
    assert by_label["mean"].uses_heads and not by_label["oracle"].uses_heads and by_label["oracle"].decoding is None
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
        ("", "no strategies given"),
    ],
)
def test_bad_strategies_name_the_problem(text, message):
    with pytest.raises(AutoDecoError, match=message):
        parse_strategies(text)


def test_grids():
    assert parse_grid("1.0, 0.2,0.2", "--oracle-temperatures") == (0.2, 1.0)
    with pytest.raises(AutoDecoError, match="--oracle-top-ps is empty"):
        parse_grid(" , ", "--oracle-top-ps")
