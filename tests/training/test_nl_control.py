"""Natural-language control: where commands go, augmentation, and the ranking loss."""

import pytest
import torch

from autodeco import AutoDecoError
from autodeco.training.nl_control import (
    ANCHOR_WEIGHT,
    CONDITIONS,
    HELD_OUT_PHRASINGS,
    PHRASINGS,
    anchor_loss,
    augment,
    command_record,
    insert_command,
    ranking_loss,
)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Question: What is 2 + 3?\nAnswer:", "Question: What is 2 + 3?\nBe brief.\nAnswer:"),
        ("The sea at night is", "Be brief.\nThe sea at night is"),
        ("Write a short poem.\n", "Write a short poem.\nBe brief.\n"),
    ],
)
def test_commands_go_before_the_line_the_answer_continues(prompt, expected):
    assert insert_command(prompt, "Be brief.") == expected


def test_commanded_records_keep_their_completion(tokenizer):
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]}
    commanded = command_record(chat, "Be brief.", tokenizer)
    assert commanded["messages"][1]["content"] == "What is 2 + 3? Be brief." and commanded["messages"][2] == chat["messages"][2]
    assert chat["messages"][1]["content"] == "What is 2 + 3?"  # the original is untouched
    ids = {"prompt_ids": tokenizer("Question: What is 7 - 4?\nAnswer:").input_ids, "completion_ids": [5, 6, 7]}
    commanded = command_record(ids, "Be brief.", tokenizer)
    assert commanded["completion_ids"] == [5, 6, 7] and "Be brief.\nAnswer:" in tokenizer.decode(commanded["prompt_ids"])
    with pytest.raises(AutoDecoError, match="user turn"):
        command_record({"messages": [{"role": "assistant", "content": "5"}]}, "Be brief.", tokenizer)


def test_augmentation_balances_conditions_and_uses_trained_phrasings_only(tokenizer):
    records = [{"prompt": f"Question: What is {i} + 1?\nAnswer:", "completion": f" {i + 1}"} for i in range(30)]
    pairs = augment(records, tokenizer, variants=2, seed=3)
    assert len(pairs) == 60 and [sum(p.condition == c for p in pairs) for c in CONDITIONS] == [20, 20, 20]
    assert all(p.phrasing in PHRASINGS[p.condition] and p.phrasing in p.record["prompt"] for p in pairs)
    assert all(p.record["completion"] == records[p.plain]["completion"] for p in pairs)
    assert augment(records, tokenizer, variants=2, seed=3) == pairs  # seeded
    for condition in CONDITIONS:  # held-out phrasings are never trained on
        assert HELD_OUT_PHRASINGS[condition] and not set(HELD_OUT_PHRASINGS[condition]) & set(PHRASINGS[condition])


def test_augmentation_refuses_clearly_and_takes_any_language(tokenizer):
    records = [{"prompt": "The sea at night is", "completion": " dark."}]
    with pytest.raises(AutoDecoError, match="no phrasings for condition"):
        augment(records, tokenizer, phrasings={"high": ("Be wild.",), "low": (), "deterministic": ("Be exact.",)})
    with pytest.raises(AutoDecoError, match="no record could take a decoding command"):
        augment([{"prompt_only_ids": [1, 2]}], tokenizer)
    other = {"high": ("Sois créatif, s'il te plaît.",), "low": ("请保守地回答。",), "deterministic": ("Antworte deterministisch.",)}
    pairs = augment(records * 3, tokenizer, phrasings=other)
    assert {p.record["prompt"].split("\n")[0] for p in pairs} == {phrasing for (phrasing,) in other.values()}


def test_ranking_loss_is_zero_only_past_the_margins_the_commanded_way():
    plain_t, plain_p = torch.full((3,), 0.8), torch.full((3,), 0.9)
    condition = torch.tensor([CONDITIONS.index(c) for c in CONDITIONS])
    moved = ranking_loss(torch.tensor([1.0, 0.6, 0.05]), torch.tensor([0.97, 0.7, 0.7]), plain_t, plain_p, condition)
    assert torch.equal(moved, torch.zeros(3))
    wrong_way = ranking_loss(torch.tensor([0.6, 1.0, 0.5]), torch.tensor([0.7, 0.97, 0.97]), plain_t, plain_p, condition)
    assert bool((wrong_way > 0.3).all())
    barely = ranking_loss(torch.tensor([0.85, 0.75, 0.15]), plain_p.clone(), plain_t, plain_p, condition)
    assert torch.allclose(barely, torch.tensor([0.10 + 0.5, 0.10 + 0.5, 0.05 + 0.5]), atol=1e-5)


def test_ranking_loss_moves_the_commanded_values_only():
    temperature, top_p = torch.full((3,), 0.8, requires_grad=True), torch.full((3,), 0.9, requires_grad=True)
    plain_t, plain_p = torch.full((3,), 0.8, requires_grad=True), torch.full((3,), 0.9, requires_grad=True)
    condition = torch.tensor([CONDITIONS.index(c) for c in CONDITIONS])
    ranking_loss(temperature, top_p, plain_t, plain_p, condition).sum().backward()
    assert plain_t.grad is None and plain_p.grad is None
    assert temperature.grad[0] < 0 < temperature.grad[1] and temperature.grad[2] > 0  # high: up; low, deterministic: down
    assert top_p.grad[0] < 0 < top_p.grad[1] and top_p.grad[2] > 0


def test_anchor_loss_pulls_plain_values_back_to_the_starting_heads():
    temperature, top_p = torch.tensor([0.3, 0.5], requires_grad=True), torch.tensor([1.0, 0.4], requires_grad=True)
    reference_t, reference_p = torch.tensor([0.3, 0.3]), torch.tensor([1.0, 1.0])
    loss = anchor_loss(temperature, top_p, reference_t, reference_p)
    assert loss[0].item() == 0 and loss[1].item() == pytest.approx(ANCHOR_WEIGHT * (0.2**2 + 0.6**2))
    loss.sum().backward()
    assert temperature.grad[1] > 0 and top_p.grad[1] < 0  # T back down, P back up
