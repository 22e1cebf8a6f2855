"""The server under hostile or careless clients, over real HTTP on loopback: clients that leave,
huge or slow or malformed requests, wrong types, bad Unicode, unknown models and paths, missing
keys. Every refusal is OpenAI's error JSON naming the problem; nothing is a 500 but a real fault."""

import json
import socket
import threading
import time

import httpx
import pytest
import torch
from fastapi import Request

from autodeco import AutoDecoModelForCausalLM
from autodeco.serving.scheduler import Scheduler
from autodeco.tiny import tiny_model, tiny_tokenizer
from test_server import API_KEY, LiveServer, model, request  # noqa: F401  (model: the shared fixture)

KEY = {"Authorization": f"Bearer {API_KEY}"}
BLOCK, FAIL = "hold the tokenizer here", "make the tokenizer fail"


class _HookedTokenizer:
    """The tiny tokenizer, except on two prompts: BLOCK waits for ``release`` (and says it has
    started), FAIL raises an error whose text must not reach the client."""

    def __init__(self) -> None:
        self.tokenizer = tiny_tokenizer()
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, text, *args, **kwargs):
        if text == BLOCK:
            self.started.set()
            assert self.release.wait(30), "the test never released the tokenizer"
        if text == FAIL:
            raise RuntimeError("secret internal detail /srv/models")
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


class _Raw:
    """One HTTP/1.1 connection with exact bytes out and whole responses back."""

    def __init__(self, server: LiveServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response (its body by Content-Length)."""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        size = int(headers.get("content-length", 0))
        while len(self.buffer) < size:
            self._read()
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (read until it does, or 20 s pass)."""
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _post(path: str, body: dict) -> bytes:
    content = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(content)}\r\n\r\n").encode() + content


@pytest.fixture(scope="module")
def hooked():
    return _HookedTokenizer()


@pytest.fixture(scope="module")
def server(model, hooked):  # noqa: F811
    """Work per request capped at 64 tokens."""
    running = LiveServer(model, hooked, limits={"max_request_tokens": 64}, max_batch_size=8, max_queue=64)
    yield running
    running.close()


def _client_host(app) -> None:
    @app.get("/client")
    async def client(incoming: Request) -> dict:
        return {"host": incoming.client.host}


@pytest.fixture(scope="module")
def strict(model):  # noqa: F811
    """Short header and body timeouts, open /metrics, a model alias, a route that shows the
    client, a tokenizer without a chat template."""
    plain = tiny_tokenizer()
    plain.chat_template = None
    running = LiveServer(
        model, plain, limits={"body_timeout_s": 0.5, "header_timeout_s": 0.5}, extend=_client_host,
        app={"aliases": ("tiny-alias",), "public_metrics": True}, max_batch_size=4, max_queue=8,
    )
    yield running
    running.close()


def _error(response: httpx.Response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


def _paced_model(step_seconds: float):
    """A tiny model whose decode steps take ``step_seconds`` each: its tokens keep coming, far
    more often than a server that polled between them would look for a departed client."""
    torch.manual_seed(1000)
    paced = AutoDecoModelForCausalLM.from_base(tiny_model("llama"))
    forward = paced.forward

    def slow(*args, **kwargs):
        time.sleep(step_seconds)
        return forward(*args, **kwargs)

    paced.forward = slow
    return paced


class _RecordingScheduler(Scheduler):
    """Records when a job is cancelled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cancelled = threading.Event()

    def cancel(self, job) -> None:
        super().cancel(job)
        self.cancelled.set()


def test_a_non_streaming_request_whose_client_leaves_frees_its_rows():
    """Its rows decode a token every 50 ms, for about 12 s unless cancelled: the server must
    notice the client leave while tokens are still arriving."""
    running = LiveServer(_paced_model(0.05), tiny_tokenizer(), scheduler_class=_RecordingScheduler, max_batch_size=8, max_queue=8)
    try:
        client = _Raw(running)
        client.send(_post("/v1/completions", {"prompt": "Once upon a time", "n": 4, "seed": 0, "max_tokens": 240}))
        deadline = time.time() + 20
        while running.scheduler.generated_tokens < 4 * 5:  # rows in the batch, a few steps in
            assert time.time() < deadline, "the request never started decoding"
            time.sleep(0.01)
        client.close()
        assert running.scheduler.cancelled.wait(5), "the server never noticed that its client left"
        while running.scheduler.running:
            assert time.time() < deadline, "the rows of the abandoned request still decode"
            time.sleep(0.01)
        assert running.scheduler.generated_tokens < 4 * 200  # stopped long before its end
        assert request(running, "GET", "/health").json() == {"status": "ok", "running": 0, "queued": 0}
    finally:
        running.close()


def test_health_answers_while_a_prompt_is_tokenised(server, hooked):
    """Tokenising runs beside the event loop: /health answers while the tokenizer is held."""
    result = {}
    asking = threading.Thread(target=lambda: result.update(response=request(server, "POST", "/v1/completions", json={"prompt": BLOCK, "max_tokens": 2})))
    asking.start()
    try:
        assert hooked.started.wait(20), "the prompt never reached the tokenizer"
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 200 and not hooked.release.is_set()
    finally:
        hooked.release.set()
        asking.join(timeout=30)
    assert result["response"].status_code == 200


def test_an_internal_error_is_a_generic_500_and_the_connection_stays_open(server):
    connection = _Raw(server)
    try:
        connection.send(_post("/v1/completions", {"prompt": FAIL}))
        status, headers, body = connection.response()
        error = json.loads(body)["error"]
        assert status == 500 and error["type"] == "server_error" and "logged" in error["message"]
        assert "secret" not in body.decode() and "RuntimeError" not in body.decode()
        assert headers.get("connection") != "close"
        connection.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection
        assert connection.response()[0] == 200
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("/v1/completions", '{"prompt": "\\ud800"}', "surrogate"),
        ("/v1/completions", '{"prompt": ["ab\\udfff"]}', "surrogate"),
        ("/v1/completions", '{"prompt": "hi", "stop": "\\ud800"}', "surrogate"),
        ("/v1/completions", '{"prompt": "hi", "model": "\\udc00"}', "surrogate"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}', "surrogate"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', "text parts"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": null}]}]}', "text parts"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]}', "text parts"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', "text only"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": null}]}', "content must be"),
    ],
)
def test_bad_text_gets_400_not_500(server, path, body, fragment):
    error = _error(request(server, "POST", path, content=body, headers={"Content-Type": "application/json"}), 400, fragment)
    assert error["type"] == "invalid_request_error"


def test_chat_without_a_chat_template_points_to_completions(strict):
    response = httpx.post(f"{strict.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=KEY)
    assert _error(response, 400, "no chat template", "/v1/completions")["param"] == "messages"


def test_text_parts_are_joined(server):
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 3?"}]
    joined = request(server, "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}], "max_tokens": 4, "seed": 1})
    plain = request(server, "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 4, "seed": 1})
    assert joined.status_code == plain.status_code == 200
    assert joined.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("temperature", "1.0", "not a string"),
        ("temperature", True, "not a boolean"),
        ("top_p", [1], "not an array"),
        ("stream", "yes", "not a string"),
        ("stream", 1, "not an integer"),
        ("n", 1.0, "not a number"),
        ("n", True, "not a boolean"),
        ("max_tokens", True, "not a boolean"),
        ("seed", "1", "not a string"),
        ("prompt", [True], "token ids"),
        ("prompt", [[1, 2]], "token ids"),
        ("prompt", ["a", "b"], "one prompt"),
        ("stop", 5, "stop must be"),
        ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
        ("logprobs", True, "not a boolean"),
        ("echo", True, "echo"),
    ],
)
def test_lenient_types_are_refused(server, field, value, fragment):
    body = {"prompt": "hi", "max_tokens": 2, field: value}
    error = _error(request(server, "POST", "/v1/completions", json=body), 400, fragment)
    assert error["param"].startswith(field)


def test_integers_still_do_for_float_fields(server):
    response = request(server, "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "temperature": 1, "top_p": 1})
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_an_unknown_model_gets_404_and_the_served_names_pass(server, strict):
    error = _error(request(server, "POST", "/v1/completions", json={"model": "gpt-4o", "prompt": "hi"}), 404, "'gpt-4o'", "'tiny'")
    assert error["code"] == "model_not_found" and error["param"] == "model"
    chat = request(server, "POST", "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert _error(chat, 404)["code"] == "model_not_found"
    for name in ("tiny", None):
        assert request(server, "POST", "/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 1}).status_code == 200
    assert httpx.post(f"{strict.url}/v1/completions", json={"model": "tiny-alias", "prompt": "hi", "max_tokens": 1}, headers=KEY).status_code == 200


def test_work_per_request_is_bounded(server):
    """The server allows 64 tokens per request (n x max_tokens); without max_tokens each choice
    gets its share of them."""
    too_much = request(server, "POST", "/v1/completions", json={"prompt": "hi", "n": 8, "max_tokens": 16})
    error = _error(too_much, 400, "n=8 x max_tokens=16 = 128", "64", "--max-request-tokens", "at most 8")
    assert error["code"] == "request_too_large" and error["param"] == "max_tokens"
    assert request(server, "POST", "/v1/completions", json={"prompt": "hi", "n": 4, "max_tokens": 16}).status_code == 200
    chat = request(server, "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 8, "seed": 3})
    assert chat.status_code == 200
    assert all(len(c["autodeco"]["temperature"]) <= 8 for c in chat.json()["choices"]) and chat.json()["usage"]["completion_tokens"] <= 64
    unset = request(server, "POST", "/v1/completions", json={"prompt": "hi", "n": 2, "max_tokens": None, "seed": 3})
    assert unset.status_code == 200 and all(len(c["autodeco"]["temperature"]) <= 32 for c in unset.json()["choices"])


def test_metrics_labels_stay_bounded_under_made_up_paths(server):
    with httpx.Client(base_url=server.url, headers=KEY, timeout=30) as client:
        for i in range(300):
            assert client.get(f"/made/up/{i}").status_code == 404
        assert client.post("/v1/models").status_code == 405
        metrics = client.get("/metrics").text
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in metrics.splitlines() if line.startswith("autodeco_requests_total{")}
    assert "unmatched" in endpoints and "/v1/models" in endpoints
    assert endpoints <= {"unmatched", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}


def test_unknown_routes_and_methods_get_openai_errors(server):
    _error(request(server, "GET", "/v2/whatever"), 404, "/v2/whatever", "/v1")
    wrong = request(server, "GET", "/v1/completions")
    _error(wrong, 405, "GET", "/v1/completions")
    assert "POST" in wrong.headers["allow"]


def test_the_key_guards_everything_but_health(server, strict):
    for path in ("/openapi.json", "/metrics", "/v1/models", "/nothing"):
        assert _error(httpx.get(f"{server.url}{path}"), 401, "Authorization")["type"] == "authentication_error"
    for header in (f"bearer {API_KEY}", f"BEARER {API_KEY}", f"Bearer  {API_KEY}"):
        assert httpx.get(f"{server.url}/openapi.json", headers={"Authorization": header}).status_code == 200
    for header in (f"Basic {API_KEY}", API_KEY, f"Bearer {API_KEY}x", "Bearer"):
        assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": header}).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{strict.url}/metrics").status_code == 200  # public_metrics
    assert httpx.get(f"{strict.url}/v1/models").status_code == 401


def test_a_chunked_body_over_the_limit_gets_413(server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(f"{server.url}/v1/completions", content=chunks(), headers={**KEY, "Content-Type": "application/json"}, timeout=30)
    assert _error(response, 413, "4096 bytes")["code"] == "request_too_large"


def test_content_length_with_transfer_encoding_gets_400_at_once(server):
    connection = _Raw(server)
    try:
        connection.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, headers, body = connection.response()
        assert status == 400 and "Content-Length and Transfer-Encoding" in json.loads(body)["error"]["message"]
        assert headers["connection"] == "close" and connection.closed_by_server()
    finally:
        connection.close()


def test_a_body_that_does_not_arrive_gets_408(strict):
    connection = _Raw(strict)
    try:
        connection.send(_post("/v1/completions", {"prompt": "hi, this body stops half-way"})[:-10])
        status, headers, body = connection.response()
        assert status == 408 and "did not arrive within 0.5 s" in json.loads(body)["error"]["message"]
        assert headers["connection"] == "close" and connection.closed_by_server()
    finally:
        connection.close()


def test_a_connection_that_trickles_its_headers_is_closed(strict):
    idle, trickling = _Raw(strict), _Raw(strict)
    try:
        trickling.send(b"GET /health HTTP/1.1\r\n")
        assert idle.closed_by_server() and trickling.closed_by_server()
        again = _Raw(strict)  # a kept-alive connection gets the same deadline for its next request
        again.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert again.response()[0] == 200
        again.send(b"GET /health HTTP/1.1\r\n")
        assert again.closed_by_server()
        again.close()
    finally:
        idle.close()
        trickling.close()


def test_x_forwarded_for_is_not_believed(strict):
    response = httpx.get(f"{strict.url}/client", headers={**KEY, "X-Forwarded-For": "203.0.113.9"})
    assert response.json() == {"host": "127.0.0.1"}
