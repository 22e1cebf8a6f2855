"""An API fuzz over real HTTP: arbitrary JSON bodies (wrong types, huge numbers, NaN, lone
surrogates, nested junk, near-valid requests) and raw malformed bodies, on both POST routes. No
answer is a 500, every refusal is OpenAI's error JSON, every 200 is a whole reply, and /health
stays live."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autodeco.tiny import tiny_tokenizer
from test_server import API_KEY, LiveServer, model  # noqa: F401  (model: the shared fixture)

ROUTES = ("/v1/completions", "/v1/chat/completions")
FIELDS = (
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "stop", "seed",
    "decoding", "stream_options", "logprobs", "top_logprobs", "echo", "role", "content", "type", "text", "include_usage",
)
# few examples, derandomized: the same requests every run, in well under a minute on 2 cores
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates included
scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text
    | st.sampled_from([0, 1, 2, 3, 16, 300, "tiny", "user", "system", "text", "static", "autodeco", "hi"])
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=3), max_leaves=8)
prose = st.sampled_from(["hi", "Once upon a time", "What is 2 + 3?"]) | text
part = st.fixed_dictionaries({"type": st.just("text") | junk, "text": prose | junk})
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]) | junk, "content": prose | st.lists(part, max_size=2) | junk})
near_valid = st.fixed_dictionaries(  # mostly well-typed values, so that many requests get as far as decoding
    {"prompt": prose | st.lists(st.integers(-3, 400), min_size=1, max_size=4) | junk, "messages": st.lists(message, min_size=1, max_size=2) | junk},
    optional={
        "max_tokens": st.integers(-1, 40) | junk, "n": st.integers(0, 4) | junk, "temperature": st.floats(-0.5, 2.5) | junk,
        "top_p": st.floats(-0.5, 2.5) | junk, "stream": st.booleans() | junk, "stop": prose | st.lists(prose, max_size=5) | junk,
        "seed": st.integers(-1, 2**64) | junk, "logprobs": st.integers(-1, 6) | st.booleans() | junk, "decoding": st.sampled_from(["autodeco", "static"]) | junk,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | junk}) | junk,
    },
)
plain = st.sampled_from(["hi", "Once upon a time", "What is 2 + 3?"]) | st.text(min_size=1, max_size=12)
valid = st.fixed_dictionaries(  # well-typed and in range: odd but legal requests that decode
    {"prompt": plain | st.lists(st.integers(0, 383), min_size=1, max_size=4), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": plain}), min_size=1, max_size=2)},
    optional={
        "model": st.sampled_from(["tiny", None]), "max_tokens": st.integers(1, 10) | st.none(), "n": st.integers(1, 4), "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 2), "stream": st.booleans(), "stop": st.lists(plain, max_size=4), "seed": st.integers(0, 2**63 - 1),
        "logprobs": st.integers(0, 5) | st.booleans(), "decoding": st.sampled_from(["autodeco", "static"]),
    },
)
bodies = st.dictionaries(st.sampled_from(FIELDS), junk, max_size=5) | near_valid | valid | junk


@pytest.fixture(scope="module")
def server(model):  # noqa: F811
    running = LiveServer(model, tiny_tokenizer(), limits={"max_request_tokens": 8}, max_batch_size=8, max_queue=64)
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def _check(client: httpx.Client, response: httpx.Response) -> None:
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        assert response.json()["choices"]
    assert client.get("/health").json()["status"] == "ok"


@settings(max_examples=60, **FUZZ)
@given(body=bodies)
@example(body={"prompt": "\ud800"})
@example(body={"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]})
@example(body={"prompt": "hi", "n": 2**70, "max_tokens": 2**70, "temperature": float("nan"), "seed": -1})
@example(body={"prompt": "hi", "max_tokens": 2, "stop": ["\udfff"], "stream": True})
def test_json_bodies_never_get_a_500(client, body):
    content = json.dumps(body).encode()  # \\ud800 escapes for lone surrogates; NaN and Infinity as Python writes them
    for route in ROUTES:
        _check(client, client.post(route, content=content, headers={"Content-Type": "application/json"}))


@settings(max_examples=100, **FUZZ)
@given(raw=st.binary(max_size=64), content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
@example(raw=b"", content_type="application/json")
@example(raw=b"\xff\xfe{", content_type="application/json")
@example(raw=b"[" * 2000 + b"]" * 2000, content_type="application/json")
@example(raw=b'{"prompt": "hi", "n": 1e999}', content_type="application/json")
@example(raw=b'{"prompt": "hi"', content_type="application/json")
@example(raw=b'{"prompt": "hi", "prompt": 5}', content_type="application/json")
def test_raw_bodies_never_get_a_500(client, raw, content_type):
    for route in ROUTES:
        _check(client, client.post(route, content=raw, headers={"Content-Type": content_type} if content_type else {}))
