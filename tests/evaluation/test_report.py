"""report.md: the paired columns against the baseline, majority, and how tuned oracles are labelled."""

import re

from autodeco.evaluation.metrics import paired_comparison, summarise
from autodeco.evaluation.report import markdown_report, results_document

PAIRED_CELL = r"[+-]\d\.\d{3} ± \d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]"


def records(correct):
    """Two samples per problem; ``correct`` holds one (first, second) pair per problem."""
    return [{"problem": str(i), "sample": s, "correct": c, "answer": "right" if c else "wrong", "answered": True, "token_ids": [1, 2],
             "temperatures": [0.7, 0.7], "top_ps": [1.0, 1.0], "seconds": 0.1, "extras": {}}
            for i, pair in enumerate(correct) for s, c in enumerate(pair)]


def document(with_paired=True):
    base = records([(True, False), (False, False), (True, True), (False, True)])
    tuned = records([(True, True), (False, True), (True, True), (False, False)])
    tuned_metrics = {**summarise(tuned), "params": {"decoding": "static", "temperature": 0.7, "top_p": 1.0, "tuned_on": "dev",
                                                    "dev_task": "t,split=dev", "dev_problems": 4, "grid": {}, "sweep": {}}}
    strategies = {"autodeco": {**summarise(base), "params": {"decoding": "autodeco"}}}
    if with_paired:
        strategies["oracle-dev"] = {**tuned_metrics, "paired": paired_comparison(tuned, base, "autodeco")}
    return results_document("tiny", "heads", {"t": strategies})


def test_report_shows_paired_differences_majority_and_the_tuning_split():
    report = markdown_report(document())
    header = next(line for line in report.splitlines() if line.startswith("| strategy"))
    assert "| majority | Δ pass@1 vs autodeco (paired s.e., 95% bootstrap) | Δ majority vs autodeco |" in header
    [autodeco] = [line for line in report.splitlines() if line.startswith("| autodeco |")]
    [tuned] = [line for line in report.splitlines() if line.startswith("| oracle-dev (tuned on dev) |")]
    assert "| baseline | baseline |" in autodeco and len(re.findall(PAIRED_CELL, tuned)) == 2
    assert "+0.125 ± " in tuned  # pass@1 5/8 against 4/8
    assert "0.500 ± 0.289 (k=2)" in tuned and "dev_problems=4" in tuned and "sweep" not in tuned and "dev_task" not in tuned
    assert "Δ: each strategy minus the baseline, autodeco, problem by problem over the 4 problems" in report
    assert "10,000 bootstrap resamples of the problems" in report and "majority is self-consistency" in report


def test_report_without_a_comparison_has_no_paired_columns():
    report = markdown_report(document(with_paired=False))
    assert "Δ" not in report and "| majority |" in report
