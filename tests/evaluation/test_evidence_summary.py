"""benchmarks/evidence/summarise.py: the evidence run's summary over hand-built results documents."""

import importlib.util
import json
from pathlib import Path

import pytest

from autodeco.evaluation.report import results_document

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "evidence" / "summarise.py"
_spec = importlib.util.spec_from_file_location("evidence_summarise", SCRIPT)
summarise = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarise)

SPECS = {name: f"reasoning_gym:{name},size=4000" for name in ("arithmetic", "letters", "chain_worked", "gcd", "sorting")}
HELD_OUT = {"gcd", "sorting"}


def stored(ours_minus_theirs, stderr=0.01, ci=None, wins=20, ties=440, losses=40):
    """A paired difference as results.json stores it: strategy − autodeco, for a wanted autodeco − strategy."""
    diff = -ours_minus_theirs
    low, high = ci if ci is not None else (diff - 2 * stderr, diff + 2 * stderr)
    return {"diff": diff, "stderr": stderr, "z": diff / stderr if stderr else None, "ci95": [low, high], "wins": wins, "ties": ties, "losses": losses}


def strategy(pass1, params, majority=None, paired=None, samples=8):
    ks = [1] if samples == 1 else [1, 2, 4, 8]
    metrics = {"pass@1": pass1, "stderr": 0.02, "majority": pass1 if majority is None else majority, "majority_stderr": 0.02,
               "pass@k": {k: min(1.0, pass1 + 0.05 * (k > 1) * k / 8) for k in ks}, "n_problems": 500, "samples": samples, "no_answer": 0,
               "mean_temperature": params.get("temperature", 0.0), "mean_top_p": params.get("top_p", 1.0), "params": params}
    return {**metrics, **({"paired": paired} if paired is not None else {})}


def document(name, vs_default=(0.05, 0.01), vs_oracle_dev=(0.0, 0.01), vs_mean=(0.0, 0.01), heads="gemma-3-270m", autodeco=0.40):
    """A one-task results.json; each vs_* is the wanted (autodeco − strategy, paired s.e.) on pass@1."""
    def pair(want, **kw):
        return {"baseline": "autodeco", "n": 500, "pass@1": stored(want[0], want[1], **kw), "majority": stored(want[0] / 2, want[1])}

    static = {"decoding": "static"}
    strategies = {
        "greedy": strategy(0.30, {"decoding": "greedy"}, samples=1, paired=pair((0.1, 0.02))),
        "default": strategy(autodeco - vs_default[0], {**static, "temperature": 1.0, "top_p": 1.0}, paired=pair(vs_default)),
        "oracle": strategy(0.45, {**static, "temperature": 0.4, "top_p": 0.95, "tuned_on": "test", "grid": {}, "sweep": {}},
                           paired=pair((-0.05, 0.01))),
        "oracle-dev": strategy(autodeco - vs_oracle_dev[0], {**static, "temperature": 0.6, "top_p": 1.0, "tuned_on": "dev", "dev_task": "x"},
                               paired=pair(vs_oracle_dev)),
        "mean": strategy(autodeco - vs_mean[0], {**static, "temperature": 0.6234, "top_p": 1.0, "from": "mean T and P"}, paired=pair(vs_mean)),
        "autodeco": strategy(autodeco, {"decoding": "autodeco"}, majority=0.47),
    }
    return json.loads(json.dumps(results_document("gemma-3-270m", heads, {SPECS[name]: strategies}, prompt_style="few-shot")))  # as on disk


def build(documents, specs=SPECS):
    return summarise.build_summary(specs, {name: documents.get(name) for name in specs}, HELD_OUT)


def test_the_sign_and_the_interval_are_flipped_to_autodeco_minus_the_strategy():
    doc = document("arithmetic")
    doc["tasks"][SPECS["arithmetic"]]["default"]["paired"]["pass@1"] = {
        "diff": -0.031, "stderr": 0.012, "z": -2.58, "ci95": [-0.055, -0.008], "wins": 10, "ties": 450, "losses": 40}
    task = build({"arithmetic": doc})["tasks"]["arithmetic"]
    difference = task["versus"]["default"]["pass@1"]
    assert difference["diff"] == 0.031 and difference["stderr"] == 0.012 and difference["z"] == 2.58
    assert difference["ci95"] == [0.008, 0.055]
    assert (difference["wins"], difference["ties"], difference["losses"]) == (40, 450, 10)
    assert task["verdicts"]["default"] == "win"
    assert summarise._paired_cell(difference) == "+0.031 ± 0.012"
    assert summarise._paired_cell(difference, interval=True) == "+0.031 ± 0.012 [+0.008, +0.055]"
    assert "| +0.031 ± 0.012 |" in summarise.markdown_summary(build({"arithmetic": doc}))


def test_a_comparison_held_by_autodeco_itself_is_used_as_it_is():
    paired = {"baseline": "default", "n": 7, "pass@1": stored(-0.02), "majority": stored(0.0)}
    strategies = {"default": {"pass@1": 0.3}, "autodeco": {"paired": paired}}
    versus = summarise.autodeco_versus(strategies, "default")
    assert versus["n"] == 7 and versus["pass@1"]["diff"] == 0.02  # autodeco − default already
    assert summarise.autodeco_versus(strategies, "mean") is None


@pytest.mark.parametrize(("diff", "stderr", "expected"), [
    (0.5, 0.25, "tie"), (0.5 + 1e-6, 0.25, "win"), (-0.5, 0.25, "tie"), (-0.5 - 1e-6, 0.25, "loss"),
    (0.025, 0.0125, "tie"), (0.0, 0.0, "tie"), (0.01, 0.0, "win"),
])
def test_verdict_boundaries_at_two_standard_errors(diff, stderr, expected):
    assert summarise.verdict(diff, stderr) == expected


@pytest.mark.parametrize(("goal", "diff", "stderr", "met"), [
    ("above-default", 0.025, 0.0125, False),  # exactly 2 s.e. is not more than 2 s.e.
    ("above-default", 0.0251, 0.0125, True),
    ("above-mean", 0.025, 0.0125, False),
    ("above-mean", 0.0251, 0.0125, True),
    ("not-below-mean", -0.025, 0.0125, True),  # exactly 2 s.e. below is not more than 2 s.e. below
    ("not-below-mean", -0.0251, 0.0125, False),
    ("oracle-dev", -0.01, 0.05, True),
    ("oracle-dev", -(0.51 - 0.5), 0.05, True),  # -0.010000000000000009: float noise is on the boundary
    ("oracle-dev", -0.0101, 0.001, False),
    ("oracle-dev", -0.0101, 0.5, False),  # the point estimate decides, not the s.e.
])
def test_goal_rules_at_their_boundaries(goal, diff, stderr, met):
    assert summarise.goal_met(goal, {"diff": diff, "stderr": stderr, "ci95": [diff - 0.1, diff + 0.1]}) is met


def test_goals_through_the_stored_documents_and_the_count_lines():
    documents = {
        "arithmetic": document("arithmetic", vs_default=(0.025, 0.0125), vs_oracle_dev=(-0.01, 0.01), vs_mean=(-0.025, 0.0125)),  # all on a boundary
        "letters": document("letters", vs_default=(0.0251, 0.0125), vs_oracle_dev=(-0.0101, 0.01), vs_mean=(0.0251, 0.0125)),
        "chain_worked": document("chain_worked", vs_default=(0.1, 0.01), vs_oracle_dev=(0.02, 0.01), vs_mean=(-0.0251, 0.0125)),
        "gcd": document("gcd", vs_default=(0.1, 0.01), vs_oracle_dev=(0.0, 0.01), vs_mean=(0.05, 0.01)),
        "sorting": document("sorting", vs_default=(-0.1, 0.01), vs_oracle_dev=(-0.2, 0.01), vs_mean=(0.0, 0.01)),
    }
    summary = build(documents)
    goals = {g["key"]: g for g in summary["goals"]}
    assert goals["above-default"]["met"] == ["letters", "chain_worked", "gcd"]
    assert goals["oracle-dev"]["met"] == ["arithmetic", "chain_worked", "gcd"]
    assert goals["not-below-mean"]["met"] == ["arithmetic", "letters", "gcd", "sorting"]
    assert goals["above-mean"]["met"] == ["letters", "gcd"]
    assert [g["line"] for g in summary["goals"]] == [
        "above default: 3 of 5 tasks (goal: all) — missed",
        "≥ oracle-dev − 1 pt: 3 of 5 tasks (goal: 4 of 5) — missed",
        "not below mean: 4 of 5 tasks (goal: all) — missed",
        "above mean: 2 of 5 tasks (goal: ≥ 2) — reached",
    ]
    tasks = summary["tasks"]
    assert tasks["gcd"]["role"] == "held-out" and tasks["arithmetic"]["role"] == "training"
    assert tasks["arithmetic"]["verdicts"] == {"greedy": "win", "default": "tie", "oracle": "loss", "oracle-dev": "tie", "mean": "tie"}
    assert tasks["sorting"]["sentence"] == ("sorting (held out): AutoDeco loses against default (-0.100 ± 0.010), loses against oracle-dev "
                                           "(-0.200 ± 0.010) and ties with mean (+0.000 ± 0.010), pass@1 problem by problem over 500 problems.")
    assert tasks["letters"]["sentence"].startswith("letters (training): AutoDeco wins against default (+0.025 ± 0.013), ties with oracle-dev")
    # the 95% interval beside the oracle-dev rule: [Δ - 2 s.e., Δ + 2 s.e.] here
    assert tasks["arithmetic"]["goals"]["oracle-dev"] == {"met": True, "interval_includes_margin": True}
    assert tasks["sorting"]["goals"]["oracle-dev"] == {"met": False, "interval_includes_margin": False}
    report = summarise.markdown_summary(summary)
    assert "| arithmetic | training | -0.0100 ± 0.0100 [-0.0300, +0.0100] | tie | yes | yes |" in report
    assert "**above mean: 2 of 5 tasks (goal: ≥ 2) — reached**" in report
    assert "Rule: met when autodeco − oracle-dev ≥ −0.01 (the point estimate)" in report
    assert "- heads: `gemma-3-270m` (every task run)" in report and "heads differ" not in report
    row = next(line for line in report.splitlines() if line.startswith("| gcd | `reasoning_gym:gcd,size=4000` | held out |"))
    assert "| 0.450 (T=0.4, P=0.95) | 0.400 (T=0.6, P=1) | 0.350 (T=0.623) | 0.400 | 0.450 |" in row
    assert "| autodeco pass@8 |" in report


def test_missing_tasks_are_listed_as_not_yet_run_and_leave_goals_open():
    summary = build({"arithmetic": document("arithmetic"), "gcd": document("gcd", vs_mean=(0.05, 0.01))})
    assert summary["not_yet_run"] == ["letters", "chain_worked", "sorting"]
    assert summary["tasks"]["letters"] == {"name": "letters", "spec": SPECS["letters"], "role": "training", "status": "not yet run",
                                           "sentence": "letters (training): not yet run."}
    lines = [g["line"] for g in summary["goals"]]
    assert lines[0] == "above default: 2 of 5 tasks (goal: all) — open, 3 not yet run"
    assert lines[3] == "above mean: 1 of 5 tasks (goal: ≥ 2) — open, 3 not yet run"
    report = summarise.markdown_summary(summary)
    assert "- not yet run: letters, chain_worked, sorting" in report
    assert "| sorting | `reasoning_gym:sorting,size=4000` | held out | not yet run |" in report
    assert "| letters | training | not yet run |" in report
    readme = summarise.markdown_table_for_readme(summary)
    assert "| sorting | yes | not yet run |" in readme
    assert "| gcd | yes | 0.350 | 0.400 | 0.350 | 0.400 | +0.050 ± 0.010 | win / tie / win |" in readme


def test_a_missing_goal_that_cannot_be_reached_any_more_is_missed():
    summary = build({"arithmetic": document("arithmetic", vs_default=(-0.1, 0.01))})
    assert summary["goals"][0]["line"] == "above default: 0 of 5 tasks (goal: all) — missed"


def test_tasks_evaluated_with_different_heads_are_flagged():
    summary = build({"arithmetic": document("arithmetic"), "letters": document("letters", heads="/work/evidence-work/heads-top-p-lr-0.1"),
                     "gcd": document("gcd")})
    assert summary["mixed_heads"]
    assert summary["heads"] == {"gemma-3-270m": ["arithmetic", "gcd"], "/work/evidence-work/heads-top-p-lr-0.1": ["letters"]}
    report = summarise.markdown_summary(summary)
    assert "**heads differ between tasks**" in report and "  - `gemma-3-270m`: arithmetic, gcd" in report
    assert "| task | spec | role | heads | n problems |" in report
    assert "| `/work/evidence-work/heads-top-p-lr-0.1` | 500 | 8 |" in report
    assert "| sorting | `reasoning_gym:sorting,size=4000` | held out |  | not yet run |" in report
    assert "different heads" in summarise.markdown_table_for_readme(summary)
    assert not build({"arithmetic": document("arithmetic")})["mixed_heads"]


def test_the_real_tasks_file_parses():
    specs = summarise.parse_tasks_file(summarise.DEFAULT_TASKS_FILE.read_text())
    assert list(specs) == ["arithmetic", "letters", "chain_worked", "gcd", "sorting"]
    assert specs["gcd"] == "reasoning_gym:gcd,min_value=1,max_value=45,size=4000"


def test_main_writes_both_files_and_prints_the_readme_table(tmp_path, capsys):
    tasks_file = tmp_path / "tasks.sh"
    tasks_file.write_text('RG=reasoning_gym\ndeclare -A TASK=(\n' + "".join(f'  [{n}]="$RG:{n},size=4000"\n' for n in SPECS) + ")\n")
    for name in ("arithmetic", "gcd"):
        (tmp_path / "test" / name).mkdir(parents=True)
        (tmp_path / "test" / name / "results.json").write_text(json.dumps(document(name)))
    assert summarise.main(["--results", str(tmp_path), "--tasks-file", str(tasks_file)]) == 0
    out = capsys.readouterr().out
    assert "| task | held out? | default | oracle-dev | mean | autodeco |" in out and "| letters | no | not yet run |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["held_out"] == ["gcd", "sorting"] and summary["tasks"]["arithmetic"]["strategies"]["autodeco"]["pass@k"]["8"] > 0
    assert (tmp_path / "summary.md").read_text() == summarise.markdown_summary(summary)
    with pytest.raises(SystemExit):
        summarise.main(["--results", str(tmp_path), "--tasks-file", str(tasks_file), "--held-out", "gcd,sortng"])
