"""The OpenAI-compatible server, over real HTTP on loopback: the official client, raw errors,
concurrency, cancellation, seeds."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn

from autodeco import AutoDecoModelForCausalLM, SamplingParams
from autodeco.engine import generate
from autodeco.serving.app import create_app
from autodeco.serving.scheduler import Scheduler
from autodeco.serving.server import Limits, listen_socket, resolve_address, server_config
from autodeco.speculative import ModelDrafter, Speculation
from autodeco.tiny import tiny_model, tiny_tokenizer

API_KEY = "test-key"


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread, with the settings `autodeco
    serve` uses (the other test_server_* modules use it too). ``limits`` are :class:`Limits` fields (a 4096-byte body limit unless given);
    ``app`` holds create_app's other keyword arguments; ``extend(app)`` may add routes."""

    def __init__(self, model, tokenizer, limits=None, app=None, scheduler_class=Scheduler, extend=None, **options) -> None:
        start_scheduler = options.pop("start_scheduler", True)
        self.scheduler = scheduler_class(model, tokenizer, **options)
        if start_scheduler:
            self.scheduler.start()
        limits = Limits(**{"max_body_bytes": 4096, **(limits or {})})
        listener = listen_socket(*resolve_address("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        served = create_app(self.scheduler, "tiny", limits=limits, **{"api_key": API_KEY, **(app or {})})
        if extend is not None:
            extend(served)
        self.server = uvicorn.Server(server_config(served, limits, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.scheduler.stop()


@pytest.fixture(scope="module")
def model():
    base = tiny_model("llama")
    torch.manual_seed(1000)
    return AutoDecoModelForCausalLM.from_base(base)


@pytest.fixture(scope="module")
def server(model):
    running = LiveServer(model, tiny_tokenizer(), max_batch_size=8, max_queue=64)
    yield running
    running.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def request(server, method: str, path: str, **kwargs) -> httpx.Response:
    """One HTTP request to ``server`` with the API key (``headers`` add to it)."""
    headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert request(server, "GET", "/health").json()["status"] == "ok"
    client.completions.create(model="tiny", prompt="The quick", max_tokens=2)
    metrics = request(server, "GET", "/metrics").text
    for name in ("autodeco_requests_total", "autodeco_queue_depth", "autodeco_running_rows", "autodeco_generated_tokens", "autodeco_request_latency_seconds"):
        assert name in metrics


def test_completions_carry_text_usage_and_per_token_t_and_p(client):
    result = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, seed=3, n=2, logprobs=2)
    assert len(result.choices) == 2 and result.usage.completion_tokens == sum(len(c.model_extra["autodeco"]["temperature"]) for c in result.choices)
    for choice in result.choices:
        traces = choice.model_extra["autodeco"]
        assert len(traces["temperature"]) == len(traces["top_p"]) == len(choice.logprobs.tokens) > 0
        assert all(0 < t < 2 for t in traces["temperature"]) and all(0 < p <= 1 for p in traces["top_p"])
        assert "".join(choice.logprobs.tokens) == choice.text and choice.finish_reason in ("stop", "length")
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs) and all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    assert result.choices[0].text != result.choices[1].text or result.choices[0].model_extra != result.choices[1].model_extra


def test_a_fixed_seed_gives_the_text_of_autodeco_generate(client, model):
    expected = generate(model, tiny_tokenizer(), "Once upon a time", SamplingParams(seed=5, max_new_tokens=10))[0]
    result = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, seed=5)
    assert result.choices[0].text == expected.text
    assert result.choices[0].model_extra["autodeco"]["temperature"] == pytest.approx(expected.temperatures)


def test_chat_streaming_and_not_give_the_same_answer(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=9, temperature=0.8, top_p=0.9)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=9, temperature=0.8, top_p=0.9,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content and whole.choices[0].message.role == "assistant"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    temperatures = [t for c in chunks if c.choices for t in c.choices[0].model_extra["autodeco"]["temperature"]]
    assert temperatures == pytest.approx(whole.choices[0].model_extra["autodeco"]["temperature"])


def test_stop_strings_end_the_text_and_chat_logprobs_follow_the_tokens(client):
    free = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=24, seed=4).choices[0]
    stop = free.text[3:5]  # a piece of the text the same seed writes
    cut = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=24, seed=4, stop=[stop]).choices[0]
    assert cut.text == free.text[: free.text.index(stop)] and cut.finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6, seed=2, logprobs=True, top_logprobs=3)
    entries = chat.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == chat.choices[0].message.content
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)


def test_greedy_and_static_decoding(client):
    first = client.completions.create(model="tiny", prompt="Question: What is 7 - 4?", max_tokens=8, temperature=0)
    again = client.completions.create(model="tiny", prompt="Question: What is 7 - 4?", max_tokens=8, temperature=0, seed=123)
    assert first.choices[0].text == again.choices[0].text and set(first.choices[0].model_extra["autodeco"]["temperature"]) == {0.0}
    static = client.completions.create(model="tiny", prompt="The lazy dog", max_tokens=6, temperature=0.7, top_p=0.9, extra_body={"decoding": "static"})
    used = static.choices[0].model_extra["autodeco"]
    assert used["temperature"] == pytest.approx([0.7] * 6) and used["top_p"] == pytest.approx([0.9] * 6)


def test_32_concurrent_requests_all_complete_as_they_would_alone(server, client):
    prompts = [f"Question: What is {i} + {i % 7}?" for i in range(32)]

    def ask(i: int) -> str:
        return client.completions.create(model="tiny", prompt=prompts[i], max_tokens=6 + i % 5, seed=i).choices[0].text

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, range(32)))
    alone = [ask(i) for i in range(0, 32, 8)]
    assert [together[i] for i in range(0, 32, 8)] == alone
    assert all(isinstance(t, str) for t in together) and server.scheduler.running == 0


def test_a_dropped_stream_frees_its_rows(server):
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    deadline = time.time() + 10
    while server.scheduler.running:
        assert time.time() < deadline, "the dropped stream still decodes"
        time.sleep(0.05)
    assert request(server, "GET", "/health").json()["running"] == 0


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ('{"model": "tiny", "prompt": "hi", ', 400, "not valid JSON"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": 10_000}, 400, "context"),
        ({"model": "tiny", "prompt": "   "}, 400, "empty"),
        ({"model": "tiny", "prompt": "hi", "n": 0}, 400, "n"),
        ({"model": "tiny", "prompt": [5, 99_999]}, 400, "token ids"),
        ({"model": "tiny", "prompt": "x" * 5000}, 413, "bytes"),
    ],
)
def test_bad_completion_requests_get_openai_errors(server, body, status, fragment):
    content = body if isinstance(body, str) else json.dumps(body)
    response = request(server, "POST", "/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and {"type", "param", "code"} <= set(error)


def test_bad_chat_requests_keys_and_routes_get_openai_errors(server):
    empty = request(server, "POST", "/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert empty.status_code == 400 and "messages" in empty.json()["error"]["message"]
    wrong_role = request(server, "POST", "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]})
    assert wrong_role.status_code == 400
    unauthorised = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi"}, headers={"Authorization": "Bearer wrong"})
    assert unauthorised.status_code == 401 and unauthorised.json()["error"]["type"] == "authentication_error"
    missing = request(server, "GET", "/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    assert request(server, "GET", "/health").json()["status"] == "ok"  # still serving


def test_a_full_queue_answers_429(model):
    """With the decode thread held, the one queue place fills and the next request gets 429."""
    busy = LiveServer(model, tiny_tokenizer(), app={"api_key": None}, max_batch_size=1, max_queue=1, start_scheduler=False)
    try:
        first = threading.Thread(target=_ignore_timeout, args=(f"{busy.url}/v1/completions",))
        first.start()
        deadline = time.time() + 10
        while busy.scheduler.queued < 1:
            assert time.time() < deadline, "the first request never queued"
            time.sleep(0.01)
        response = httpx.post(f"{busy.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
        assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
        first.join(timeout=10)
    finally:
        busy.close()


def _ignore_timeout(url: str) -> None:
    try:
        httpx.post(url, json={"prompt": "hi", "max_tokens": 2}, timeout=2)
    except httpx.TimeoutException:
        pass


def test_a_speculative_server_gives_the_tokens_of_plain_decoding(model):
    """Concurrent seeded requests through a server that drafts with a draft model (the target's
    own base: long accepted runs); its metrics count the drafts."""
    speculation = Speculation(ModelDrafter(model.llm), num_draft_tokens=4)
    running = LiveServer(model, tiny_tokenizer(), max_batch_size=8, max_queue=64, speculation=speculation)
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, max_retries=0)
        prompts = [f"Question: What is {i} + {i % 7}?" for i in range(8)]

        def ask(i: int):
            return client.completions.create(model="tiny", prompt=prompts[i], max_tokens=8 + i, seed=i, temperature=0.3 if i % 2 else 0).choices[0]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        for i, answer in enumerate(answers):
            expected = generate(model, tiny_tokenizer(), prompts[i], SamplingParams(seed=i, max_new_tokens=8 + i, temperature_scale=0.3 if i % 2 else 0))[0]
            assert answer.text == expected.text
        assert speculation.stats.accepted > 0
        metrics = request(running, "GET", "/metrics").text
        assert f"autodeco_accepted_draft_tokens {float(speculation.stats.accepted)}" in metrics
    finally:
        running.close()
