"""JSONL training data: the three record shapes, length limits, and every bad input named."""

import json

import pytest

from autodeco.errors import AutoDecoError
from autodeco.training.data import collate, load_examples


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_prompt_completion_marks_completion_and_appends_eos(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "Question: What is 2 + 3? Answer:", "completion": " 5."}])
    (example,), stats = load_examples(path, tokenizer, max_length=64)
    prompt_ids = tokenizer("Question: What is 2 + 3? Answer:")["input_ids"]
    assert example.input_ids[: example.prompt_length] == tuple(prompt_ids)
    assert tokenizer.decode(example.input_ids[example.prompt_length :]) == " 5.<eos>"
    assert example.targets().tolist() == list(example.input_ids[example.prompt_length :])
    assert stats.completion_tokens == example.completion_length and stats.examples == 1


def test_messages_use_the_chat_template(tmp_path, tokenizer):
    messages = [{"role": "user", "content": "What is 7 - 4?"}, {"role": "assistant", "content": "3"}]
    (example,), _ = load_examples(_write(tmp_path / "d.jsonl", [{"messages": messages}]), tokenizer, max_length=64)
    assert tokenizer.decode(example.input_ids[: example.prompt_length]) == "<|user|>What is 7 - 4?<|end|><|assistant|>"
    assert tokenizer.decode(example.input_ids[example.prompt_length :]) == "3<|end|>"


def test_token_id_records_are_used_as_they_are(tmp_path, tokenizer):
    (example,), _ = load_examples(_write(tmp_path / "d.jsonl", [{"prompt_ids": [1, 40, 41], "completion_ids": [50, 2]}]), tokenizer, 64)
    assert example.input_ids == (1, 40, 41, 50, 2) and example.prompt_length == 3


def test_truncate_or_drop_long_examples(tmp_path, tokenizer):
    records = [{"prompt_ids": [1, 5], "completion_ids": list(range(10, 30))}, {"prompt_ids": list(range(10, 20)), "completion_ids": [3]}, {"prompt_ids": [1], "completion_ids": [7, 8]}]
    path = _write(tmp_path / "d.jsonl", records)
    examples, stats = load_examples(path, tokenizer, max_length=8, overflow="truncate")
    assert [len(e.input_ids) for e in examples] == [8, 3]
    assert (stats.truncated, stats.dropped, stats.completion_tokens) == (1, 1, 8)
    examples, stats = load_examples(path, tokenizer, max_length=8, overflow="drop")
    assert [len(e.input_ids) for e in examples] == [3] and stats.dropped == 2 and "longer than 8" in stats.summary()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "completion": "b"}', "{not json"], r"d\.jsonl:2: not valid JSON"),
        ([{"prompt": "a"}], r"d\.jsonl:1: missing or non-string field\(s\) \['completion'\]"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "must have role 'assistant'"),
        ([{"prompt_ids": [1], "completion_ids": [9999]}], "outside the tokenizer's vocabulary"),
        ([{"prompt": "a", "completion": ""}], "nothing left to train on"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_bad_data_is_named(tmp_path, tokenizer, lines, message):
    with pytest.raises(AutoDecoError, match=message):
        load_examples(_write(tmp_path / "d.jsonl", lines), tokenizer, max_length=64)


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(AutoDecoError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl", tokenizer, max_length=64)


def test_collate_right_pads(tokenizer):
    from autodeco.training.data import Example

    ids, mask = collate([Example((1, 2, 3), 1), Example((4,), 1)], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
