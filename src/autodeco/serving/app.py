"""The OpenAI-compatible HTTP server (FastAPI): routes, authentication, limits, errors, metrics.

Every error is OpenAI's error JSON with a fitting status (400 bad request, 401 bad key, 404, 413
body too large, 429 queue full, 500), and no request can stop the server.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from transformers import PreTrainedTokenizerBase

from autodeco.decoding import context_length
from autodeco.engine import Completion, StreamEvent, TokenTrace, encode_prompts
from autodeco.errors import AutoDecoError
from autodeco.serving import protocol
from autodeco.serving.scheduler import Job, QueueFull, Scheduler

MAX_BODY_BYTES = 1 << 20
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


def _coalesce(events: list[StreamEvent]) -> list[StreamEvent]:
    """Consecutive events of each choice folded into one, in the order the choices first appear."""
    merged: dict[int, StreamEvent] = {}
    for event in events:
        if event.index not in merged:
            merged[event.index] = event
            continue
        earlier = merged[event.index]
        merged[event.index] = replace(
            earlier, text=earlier.text + event.text, tokens=earlier.tokens + event.tokens,
            finish_reason=event.finish_reason or earlier.finish_reason,
            stop_token_id=event.stop_token_id if event.stop_token_id is not None else earlier.stop_token_id,
        )
    return list(merged.values())


class BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(protocol.error_body(f"the request body is over {limit} bytes; send a shorter prompt", code="request_too_large"), status_code=413)


class _Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("autodeco_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("autodeco_request_latency_seconds", "Time to the whole response", ["endpoint"], registry=self.registry)
        self.first_token = Histogram("autodeco_time_to_first_token_seconds", "Time to the first generated text", registry=self.registry)
        Gauge("autodeco_queue_depth", "Requests waiting for room in the batch", registry=self.registry).set_function(lambda: scheduler.queued)
        Gauge("autodeco_running_rows", "Sequences decoding now", registry=self.registry).set_function(lambda: scheduler.running)
        Gauge("autodeco_generated_tokens", "Tokens generated since start", registry=self.registry).set_function(lambda: scheduler.generated_tokens)
        Gauge("autodeco_prompt_tokens", "Prompt tokens prefilled since start", registry=self.registry).set_function(lambda: scheduler.prompt_tokens)
        if scheduler.speculation is not None:
            stats = scheduler.speculation.stats
            Gauge("autodeco_draft_tokens", "Draft tokens verified since start", registry=self.registry).set_function(lambda: stats.drafted)
            Gauge("autodeco_accepted_draft_tokens", "Draft tokens accepted since start", registry=self.registry).set_function(lambda: stats.accepted)
            Gauge("autodeco_tokens_per_target_forward", "Mean tokens per row and target forward", registry=self.registry).set_function(lambda: stats.tokens_per_forward)


def create_app(
    scheduler: Scheduler, model_name: str, *, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The server around a (started) :class:`Scheduler`; ``api_key`` guards the ``/v1`` routes."""
    tokenizer: PreTrainedTokenizerBase = scheduler.tokenizer
    limit = context_length(scheduler.model)
    vocab = scheduler.model.config.get_text_config().vocab_size
    metrics = _Metrics(scheduler)
    app = FastAPI(title="autodeco", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)

    def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> JSONResponse:
        return JSONResponse(protocol.error_body(message, kind, param, code), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON", code="invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error(400, f"{where or 'body'}: {first.get('msg', 'invalid value')}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), kind="invalid_request_error" if exc.status_code < 500 else "server_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.middleware("http")
    async def authenticate_and_count(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if api_key is not None and path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                metrics.requests.labels(path, "401").inc()
                return error(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'", kind="authentication_error", code="invalid_api_key")
        start = time.perf_counter()
        response = await call_next(request)
        metrics.requests.labels(path, str(response.status_code)).inc()
        if path.startswith("/v1/") and response.status_code == 200 and not isinstance(response, StreamingResponse):
            metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": scheduler.running, "queued": scheduler.queued}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "autodeco"}]}

    def piece(token_id: int) -> str:
        return tokenizer.decode([token_id])

    def submit(prompt: list[int], body: protocol.GenerationRequest, max_tokens: int | None, logprobs: int | None) -> Job | JSONResponse:
        if any(not 0 <= t < vocab for t in prompt):
            return error(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        room = None if limit is None else limit - len(prompt)
        if room is not None and room < 1:
            return error(400, f"the prompt has {len(prompt)} tokens but the model's context is {limit}; shorten it", param="prompt", code="context_length_exceeded")
        if max_tokens is not None and room is not None and max_tokens > room:
            return error(
                400, f"max_tokens={max_tokens} does not fit: the context is {limit} tokens and the prompt takes {len(prompt)}; "
                f"ask for at most {room}", param="max_tokens", code="context_length_exceeded",
            )
        job = Job(prompt, body.sampling_params(max_tokens or room or 256), logprobs, asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            return error(429, str(exc), kind="rate_limit_error", code="queue_full")
        except AutoDecoError as exc:
            return error(400, str(exc), param="n")
        return job

    async def collect(request: Request, job: Job) -> list[Completion] | JSONResponse:
        """Wait for every choice; cancel the job if the client goes away meanwhile."""
        choices = [Completion("", [], "", len(job.prompt)) for _ in job.params]
        first = True
        while True:
            try:
                item = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    return error(499, "the client closed the request")
                continue
            if item is None:
                return choices
            if isinstance(item, AutoDecoError):
                return error(400, str(item))
            if first:
                metrics.first_token.observe(time.perf_counter() - job.submitted)
                first = False
            choices[item.index].add(item)

    async def events(request: Request, job: Job) -> AsyncIterator[StreamEvent | AutoDecoError]:
        """The job's events as they come, those that piled up meanwhile merged per choice (one
        chunk each, however far the client fell behind); the job is cancelled if the stream is
        dropped."""
        first = True
        try:
            while True:
                arrived = [await job.events.get()]
                while not job.events.empty():
                    arrived.append(job.events.get_nowait())
                end = next((i for i, item in enumerate(arrived) if not isinstance(item, StreamEvent)), len(arrived))
                for item in _coalesce(arrived[:end]):
                    if first:
                        metrics.first_token.observe(time.perf_counter() - job.submitted)
                        first = False
                    yield item
                if end < len(arrived):  # None (done) or an error
                    if arrived[end] is not None:
                        yield arrived[end]
                    return
        finally:
            scheduler.cancel(job)  # frees the rows of a dropped stream; a no-op for a finished job

    def sse(payload: dict[str, Any] | str) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

    async def respond(
        request: Request, job: Job, body: protocol.GenerationRequest, prompt_tokens: int, kind: str,
        stream_choice: Callable[[StreamEvent], dict[str, Any]], final_choice: Callable[[int, Completion], dict[str, Any]],
        opening: list[dict[str, Any]] | None = None,
    ) -> Any:
        """The response to a submitted job: server-sent chunks (``kind`` + ".chunk" for chat) as
        events come, or one object once every choice has finished."""
        request_id = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
        if body.stream:
            async def stream() -> AsyncIterator[str]:
                produced = 0
                for choice in opening or []:
                    yield sse(protocol.envelope(chunk_kind, request_id, model_name, [choice]))
                async for item in events(request, job):
                    if isinstance(item, AutoDecoError):
                        yield sse(protocol.error_body(str(item)))
                        break
                    produced += len(item.tokens)
                    yield sse(protocol.envelope(chunk_kind, request_id, model_name, [stream_choice(item)]))
                if body.include_usage:
                    yield sse(protocol.envelope(chunk_kind, request_id, model_name, [], usage=protocol.usage(prompt_tokens, produced)))
                yield sse("[DONE]")

            return StreamingResponse(stream(), media_type="text/event-stream")
        result = await collect(request, job)
        if isinstance(result, JSONResponse):
            return result
        choices = [final_choice(i, c) for i, c in enumerate(result)]
        return protocol.envelope(kind, request_id, model_name, choices, usage=protocol.usage(prompt_tokens, sum(len(c.tokens) for c in result)))

    @app.post("/v1/completions")
    async def completions(request: Request, body: protocol.CompletionRequest) -> Any:
        prompt = body.prompt if isinstance(body.prompt, list) else tokenizer(body.prompt).input_ids
        job = submit(prompt, body, body.max_tokens, body.logprobs)
        if isinstance(job, JSONResponse):
            return job
        offsets = [0] * body.n  # characters streamed so far per choice: logprobs' text_offset

        def choice(index: int, text: str, tokens: list[TokenTrace], finish_reason: str | None) -> dict[str, Any]:
            logprobs = None if body.logprobs is None else protocol.completion_logprobs(tokens, piece, offsets[index])
            offsets[index] += len(text)
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason, "autodeco": protocol.extension(tokens)}

        return await respond(
            request, job, body, len(prompt), "text_completion",
            lambda e: choice(e.index, e.text, e.tokens, e.finish_reason), lambda i, c: choice(i, c.text, c.tokens, c.finish_reason),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: protocol.ChatCompletionRequest) -> Any:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = encode_prompts(tokenizer, [messages], chat=True)[0]
        except AutoDecoError as exc:
            return error(400, str(exc), param="messages")
        except Exception as exc:  # a chat template that rejects this conversation (e.g. role order)
            return error(400, f"the chat template rejected these messages: {exc}", param="messages")
        job = submit(prompt, body, body.max_completion_tokens or body.max_tokens, (body.top_logprobs or 0) if body.logprobs else None)
        if isinstance(job, JSONResponse):
            return job

        def choice(index: int, field: str, content: dict[str, str], tokens: list[TokenTrace], finish_reason: str | None) -> dict[str, Any]:
            logprobs = protocol.chat_logprobs(tokens, piece) if body.logprobs else None
            return {"index": index, field: content, "logprobs": logprobs, "finish_reason": finish_reason, "autodeco": protocol.extension(tokens)}

        def delta(event: StreamEvent) -> dict[str, Any]:
            content = {"content": event.text} if event.text or event.finish_reason is None else {}
            return choice(event.index, "delta", content, event.tokens, event.finish_reason)

        return await respond(
            request, job, body, len(prompt), "chat.completion", delta,
            lambda i, c: choice(i, "message", {"role": "assistant", "content": c.text}, c.tokens, c.finish_reason),
            opening=[choice(i, "delta", {"role": "assistant", "content": ""}, [], None) for i in range(body.n)],
        )

    return app
