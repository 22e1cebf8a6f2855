"""One row that cannot be sampled fails alone: its batch neighbours, in the running batch and in
the server's scheduler, decode as they would without it."""

import asyncio

import pytest

from autodeco import SamplingParams
from autodeco.decoding import RowFailed, RowRequest, RunningBatch
from autodeco.errors import AutoDecoError
from autodeco.serving.scheduler import Job, Scheduler
from autodeco.speculative import NgramDrafter, Speculation

INNOCENT = {"a": [1, 40, 41], "b": [1, 50, 51, 50, 51]}  # 3 and 5 tokens: at most 9 long within 4 new tokens
VICTIM = [1] + list(range(60, 71))  # 12 tokens: its poisoned lengths (12, 14) are reached by no other row
NEW_TOKENS = 4


def _poison_rows_of_length(model, length: int) -> None:
    """NaN logits (and so NaN statistics for the heads) for every row whose sequence, fed tokens
    included, is ``length`` long or longer: what a row hitting a float overflow inside the model gives."""
    seen = {}

    def remember_mask(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"]

    def poison(module, args, output):
        rows = seen["mask"].sum(dim=-1) >= length
        return output.masked_fill(rows.view(-1, 1, 1), float("nan"))

    model.register_forward_pre_hook(remember_mask, with_kwargs=True)
    model.llm.get_output_embeddings().register_forward_hook(poison)


def _decode(model, requests: list[RowRequest], speculation: Speculation | None = None) -> tuple[dict, list[RowFailed]]:
    """Every request joins one batch, which runs to its end: tokens per key, and the failures."""
    batch = RunningBatch(model, eos_token_ids=set(), speculation=speculation)
    tokens, failures = {r.key: [] for r in requests}, []
    events = batch.join(requests)
    while True:
        for event in events:
            if isinstance(event, RowFailed):
                failures.append(event)
            else:
                tokens[event.key].append(event.token)
        if not len(batch):
            return tokens, failures
        events = batch.advance()


def _innocent_rows() -> list[RowRequest]:
    return [RowRequest(key, prompt, SamplingParams(seed=i, max_new_tokens=NEW_TOKENS)) for i, (key, prompt) in enumerate(INNOCENT.items())]


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "prompt-lookup"])
@pytest.mark.parametrize("poisoned_length", [len(VICTIM), len(VICTIM) + 2], ids=["at-prefill", "mid-decode"])
def test_a_row_with_nan_logits_fails_alone(make_model, poisoned_length, speculative):
    def speculation() -> Speculation | None:
        return Speculation(NgramDrafter(min_ngram=1), num_draft_tokens=3) if speculative else None

    alone, _ = _decode(make_model("llama"), _innocent_rows(), speculation())
    model = make_model("llama")
    _poison_rows_of_length(model, poisoned_length)
    victim = RowRequest("victim", VICTIM, SamplingParams(seed=9, max_new_tokens=NEW_TOKENS))
    tokens, failures = _decode(model, _innocent_rows() + [victim], speculation())
    assert [f.key for f in failures] == ["victim"]
    assert "float32 logits are NaN or infinite" in failures[0].message and "float16" not in failures[0].message
    before = poisoned_length - len(VICTIM)  # tokens sampled before the poisoned step (drafts may bring it sooner)
    assert len(tokens["victim"]) <= before if speculative else len(tokens["victim"]) == before
    for key in INNOCENT:
        assert tokens[key] == alone[key]


def test_run_raises_the_failed_rows_error(make_model):
    """One caller owns every row of :meth:`RunningBatch.run`: a failure is an exception there."""
    model = make_model("llama")
    _poison_rows_of_length(model, len(VICTIM))
    with pytest.raises(AutoDecoError, match=r"logits are NaN or infinite in batch rows \[0\]"):
        list(RunningBatch(model, eos_token_ids=set()).run([RowRequest(0, VICTIM, SamplingParams(max_new_tokens=2))]))


def _serve(model, tokenizer, prompts: dict[str, list[int]], params: dict[str, SamplingParams]) -> dict[str, list]:
    """Submit one job per prompt to a running scheduler at once; each job's events to its end."""

    async def main() -> dict[str, list]:
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(model, tokenizer, max_batch_size=8)
        jobs = {name: Job(prompt, [params[name]], None, loop) for name, prompt in prompts.items()}
        for job in jobs.values():  # queued before the decode thread starts: admitted in one step
            scheduler.submit(job)
        scheduler.start()

        async def drain(job: Job) -> list:
            items = []
            while not items or isinstance(items[-1], str):
                item = await asyncio.wait_for(job.events.get(), 60)
                items.append(item.text if hasattr(item, "text") else item)
            return items

        try:
            results = await asyncio.gather(*(drain(job) for job in jobs.values()))
        finally:
            scheduler.stop()
        return dict(zip(jobs, results))

    return asyncio.run(main())


def test_the_scheduler_fails_only_the_job_of_the_failed_row(make_model, tokenizer):
    prompts = {**INNOCENT, "victim": VICTIM}
    params = {name: SamplingParams(seed=i, max_new_tokens=NEW_TOKENS) for i, name in enumerate(prompts)}
    clean = _serve(make_model("llama"), tokenizer, INNOCENT, params)
    model = make_model("llama")
    _poison_rows_of_length(model, len(VICTIM) + 2)
    got = _serve(model, tokenizer, prompts, params)
    assert isinstance(got["victim"][-1], AutoDecoError) and "NaN or infinite" in str(got["victim"][-1])
    for name in INNOCENT:
        assert got[name] == clean[name] and got[name][-1] is None  # every event, then the end


def test_a_temperature_below_the_float_range_decodes_greedily_beside_others(make_model, tokenizer):
    """The 1.78e-39 of the hardening report (a float32 subnormal): greedy, and the batch goes on."""
    prompts = {**INNOCENT, "tiny": VICTIM}
    params = {name: SamplingParams(seed=i, max_new_tokens=NEW_TOKENS) for i, name in enumerate(INNOCENT)}
    greedy = _serve(make_model("llama"), tokenizer, {"tiny": VICTIM}, {"tiny": SamplingParams(decoding="greedy", max_new_tokens=NEW_TOKENS)})
    got = _serve(make_model("llama"), tokenizer, prompts, {**params, "tiny": SamplingParams(temperature_scale=1.78e-39, max_new_tokens=NEW_TOKENS)})
    assert got["tiny"] == greedy["tiny"]
    assert all(got[name][-1] is None for name in prompts)
