"""Exact speculative decoding: with any draft source, the target's tokens are the ones it samples
without speculation (seeded rows token for token; fresh seeds in distribution)."""

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency

from autodeco import AutoDecoError, AutoDecoModelForCausalLM, SamplingParams, Speculation, generate, make_speculation
from autodeco.decoding import RowRequest, RunningBatch
from autodeco.engine import encode_prompts
from autodeco.kv_cache import right_aligned
from autodeco.speculative import ModelDrafter, NgramDrafter, accepted_counts, early_exit_model
from autodeco.tiny import TINY_ARCHITECTURES, tiny_model

PROMPTS = [[1, 40, 41, 42, 40, 41, 42, 40, 41], [1, 50, 51], [1, 60, 61, 62, 63, 64, 65, 66, 60, 61, 62]]
MIXED = [  # greedy, learned T/P with user scales and bounds, static: one batch
    SamplingParams(decoding="greedy", max_new_tokens=30),
    SamplingParams(seed=5, max_new_tokens=24, temperature_scale=0.7, top_p_scale=1.3, t_min=0.2, p_max=0.95),
    SamplingParams(decoding="static", temperature=0.8, top_p=0.9, top_k=50, seed=9, max_new_tokens=27),
]
DRAFTERS = ("ngram", "draft", "early-exit")


class ScriptedDrafter(NgramDrafter):
    """Proposes what a function of the row's context says (oracle or always-wrong drafts)."""

    def __init__(self, script) -> None:
        super().__init__()
        self.script = script

    def propose(self, contexts, k):
        return [self.script(context)[:k] for context in contexts]


def _drafter(kind: str, model, architecture: str = "llama", vocab_size: int = 384):
    if kind == "ngram":
        return NgramDrafter(min_ngram=1)  # one-token matches too: more drafts on short random texts
    if kind == "draft":
        return ModelDrafter(tiny_model(architecture, vocab_size=vocab_size, seed=7))
    return ModelDrafter(early_exit_model(model.llm, 1))


def _alone(model, prompt, params, eos=frozenset()):
    return [event.token for event in RunningBatch(model, set(eos)).run([RowRequest(0, prompt, params)])]


def _run(model, prompts, params, speculation=None, eos=frozenset()):
    """Every row's tokens, T and P, and the finish reasons, through one running batch."""
    batch = RunningBatch(model, set(eos), speculation)
    tokens = {i: [] for i in range(len(prompts))}
    temperatures = {i: [] for i in range(len(prompts))}
    reasons = {}
    events = batch.join([RowRequest(i, p, q) for i, (p, q) in enumerate(zip(prompts, params))])
    while events:
        for event in events:
            tokens[event.key].append(event.token)
            temperatures[event.key].append(event.temperature)
            if event.finish_reason:
                reasons[event.key] = event.finish_reason
        events = batch.advance()
    return tokens, temperatures, reasons


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_seeded_and_greedy_rows_give_the_tokens_of_plain_decoding(architecture, make_model):
    """Rows with different params and budgets, past the 16-token sliding window of Gemma 3 and GPT-OSS."""
    model = make_model(architecture)
    for kind in DRAFTERS:
        speculation = Speculation(_drafter(kind, model, architecture), num_draft_tokens=4)
        tokens, _, reasons = _run(model, PROMPTS, MIXED, speculation)
        for i, prompt in enumerate(PROMPTS):
            assert tokens[i] == _alone(model, prompt, MIXED[i]), f"{kind}, row {i}"
            assert reasons[i] == "length"
        stats = speculation.stats
        assert stats.drafted > 0 and stats.tokens == sum(len(t) for t in tokens.values()) - len(PROMPTS)  # the first tokens come from the prefill


def test_statistics_count_drafts_and_tokens_per_forward(make_model):
    model = make_model("llama")
    greedy = SamplingParams(decoding="greedy", max_new_tokens=20)
    expected = _alone(model, PROMPTS[0], greedy)
    perfect = Speculation(ScriptedDrafter(lambda context: expected[len(context) - len(PROMPTS[0]):]), num_draft_tokens=4)
    tokens, _, _ = _run(model, PROMPTS[:1], [greedy], perfect)
    assert tokens[0] == expected
    # the first token comes from the prefill; 19 more in forwards of 5 (4 drafts + 1), the last cut to the budget
    assert perfect.stats.acceptance_rate == 1.0 and perfect.stats.forwards == 4 and perfect.stats.tokens == 19
    assert perfect.stats.tokens_per_forward == pytest.approx(19 / 4)


def test_drafts_that_are_always_wrong_change_nothing(make_model):
    model = make_model("qwen2")
    greedy = SamplingParams(decoding="greedy", max_new_tokens=16)
    expected = _alone(model, PROMPTS[1], greedy)
    wrong = Speculation(ScriptedDrafter(lambda context: [(t + 1) % 384 for t in expected[len(context) - len(PROMPTS[1]):]]))
    tokens, _, _ = _run(model, PROMPTS[1:2], [greedy], wrong)
    assert tokens[0] == expected
    assert wrong.stats.drafted > 0 and wrong.stats.accepted == 0 and wrong.stats.tokens_per_forward == 1.0


def test_drafts_past_eos_end_the_row_at_eos(make_model):
    model = make_model("gemma3_text")
    greedy = SamplingParams(decoding="greedy", max_new_tokens=20)
    expected = _alone(model, PROMPTS[2], greedy)
    eos = {expected[5]}
    ends_at = expected.index(expected[5])
    perfect = Speculation(ScriptedDrafter(lambda context: expected[len(context) - len(PROMPTS[2]):]), num_draft_tokens=8)
    tokens, _, reasons = _run(model, PROMPTS[2:], [greedy], perfect, eos=eos)
    assert tokens[0] == expected[: ends_at + 1] and reasons[0] == "stop"


def test_drafts_past_a_stop_string_are_dropped(make_model, tokenizer):
    model = make_model("llama")
    params = SamplingParams(seed=3, max_new_tokens=24)
    plain = generate(model, tokenizer, "the cat sat on", params)[0]
    stop = plain.text[len(plain.text) // 2 : len(plain.text) // 2 + 2]
    assert stop.strip(), "the plain text must hold a usable stop string"
    stopped = generate(model, tokenizer, "the cat sat on", SamplingParams(seed=3, max_new_tokens=24, stop=(stop,)))[0]
    offset = len(encode_prompts(tokenizer, ["the cat sat on"], chat=False)[0])
    oracle = ScriptedDrafter(lambda context: plain.token_ids[len(context) - offset:])  # runs on past the stop string
    speculation = Speculation(oracle, num_draft_tokens=6)
    speculative = generate(model, tokenizer, "the cat sat on", SamplingParams(seed=3, max_new_tokens=24, stop=(stop,)), speculation=speculation)[0]
    assert speculative.text == stopped.text and speculative.finish_reason == "stop"
    assert speculative.temperatures == pytest.approx(stopped.temperatures)
    assert speculation.stats.accepted > 0


@pytest.mark.parametrize("kind", DRAFTERS)
def test_joint_distribution_of_the_first_three_tokens_is_unchanged(kind):
    """Fresh seeds in each arm (so this is a real two-sample test, not the seeded identity):
    2,400 rows each, a 16-token vocabulary, learned T and P that vary by position, with user
    scales and bounds. Chi-square of homogeneity over the joint outcomes (rare ones pooled),
    p > 0.001."""
    base = tiny_model("llama", vocab_size=16, seed=3)
    torch.manual_seed(1003)
    model = AutoDecoModelForCausalLM.from_base(base)
    prompt = [1, 5, 6, 7, 5, 6, 7, 5, 6]
    rows = 2400
    speculation = Speculation(_drafter(kind, model, vocab_size=16), num_draft_tokens=3)

    def params(seed: int) -> SamplingParams:
        return SamplingParams(seed=seed, max_new_tokens=3, temperature_scale=0.6, t_min=0.1, p_max=0.9)

    plain, temperatures, _ = _run(model, [prompt] * rows, [params(s) for s in range(rows)])
    speculative, _, _ = _run(model, [prompt] * rows, [params(rows + s) for s in range(rows)], speculation)
    assert speculation.stats.accepted >= 50  # drafts were accepted, not only corrected
    assert len({round(t, 4) for ts in temperatures.values() for t in ts}) > 20  # T varies with position and path
    counts_plain, counts_spec = Counter(tuple(t) for t in plain.values()), Counter(tuple(t) for t in speculative.values())
    outcomes = sorted(set(counts_plain) | set(counts_spec), key=lambda o: -(counts_plain[o] + counts_spec[o]))
    common = [o for o in outcomes if counts_plain[o] + counts_spec[o] >= 20]
    table = [[counts[o] for o in common] + [rows - sum(counts[o] for o in common)] for counts in (counts_plain, counts_spec)]
    assert len(common) >= 10
    assert chi2_contingency(table).pvalue > 1e-3


def test_accepted_counts_stop_at_the_first_mismatch_and_the_row_length():
    samples = torch.tensor([[4, 5, 6, 9], [4, 0, 6, 9], [4, 5, 6, 9]])
    drafts = torch.tensor([[4, 5, 6], [4, 5, 6], [4, 5, 6]])
    assert accepted_counts(samples, drafts, torch.tensor([3, 3, 2])).tolist() == [3, 1, 2]


def test_right_aligned_gathers_each_rows_kept_columns():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    index, valid = right_aligned(keep, 3)
    assert index[0].tolist() == [0, 2, 3] and valid[0].tolist() == [True, True, True]
    assert index[1, 2].item() == 1 and valid[1].tolist() == [False, False, True]


def test_ngram_drafts_continue_the_latest_earlier_match():
    drafter = NgramDrafter(max_ngram=2)
    assert drafter.propose([[1, 2, 3, 9, 1, 2, 3, 8, 2, 3]], 3) == [[8, 2, 3]]
    assert drafter.propose([[7, 8, 9]], 3) == [[]]
    assert drafter.propose([[5, 1, 6, 1]], 2) == [[]]  # a one-token match is not enough by default
    assert NgramDrafter(max_ngram=2, min_ngram=1).propose([[5, 1, 6, 1]], 2) == [[6, 1]]
    with pytest.raises(AutoDecoError, match="1 <= min <= max"):
        NgramDrafter(max_ngram=2, min_ngram=3)


def test_bad_speculative_settings_are_refused(make_model, tmp_path):
    model = make_model("llama")
    with pytest.raises(AutoDecoError, match="not understood"):
        make_speculation("medusa", model)
    with pytest.raises(AutoDecoError, match="needs 1 <= K < 2"):
        make_speculation("early-exit:2", model)
    with pytest.raises(AutoDecoError, match="number of draft tokens must be >= 1"):
        make_speculation("ngram", model, num_draft_tokens=0)
    with pytest.raises(AutoDecoError, match="vocabulary of 16 tokens, the target 384"):
        tiny_model("llama", vocab_size=16).save_pretrained(tmp_path)
        make_speculation(f"draft:{tmp_path}", model)


def test_caches_that_cannot_give_columns_back_are_refused(make_model, monkeypatch):
    from autodeco import kv_cache

    model = make_model("llama")
    monkeypatch.setattr(kv_cache, "mergeable", lambda cache: False)
    with pytest.raises(AutoDecoError, match="decode this model without --speculative"):
        _run(model, PROMPTS[:1], [SamplingParams(decoding="greedy", max_new_tokens=8)], Speculation(NgramDrafter()))
