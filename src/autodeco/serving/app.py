"""The OpenAI-compatible HTTP server (FastAPI): routes, errors, metrics.

Every error is OpenAI's error JSON with a fitting status (400 bad request, 401 bad key, 404 no
such route or model, 408 body too slow, 413 body too large, 429 queue full, 500 with a generic
message), and no request can stop the server. The HTTP layer under the routes (limits, the key,
uvicorn's settings) is :mod:`autodeco.serving.server`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from transformers import PreTrainedTokenizerBase

from autodeco.decoding import context_length
from autodeco.configuration import json_kind
from autodeco.engine import Completion, StreamEvent, TokenTrace, encode_prompts
from autodeco.errors import AutoDecoError
from autodeco.serving import protocol
from autodeco.serving.scheduler import Job, QueueFull, Scheduler
from autodeco.serving.server import Authenticate, CatchErrors, CountRequests, Limits, ReadBody
from autodeco.serving.server import error_response as error

DEFAULT_MAX_TOKENS = 256  # when neither the request nor the model's context sets a length
T = TypeVar("T")


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


def _explain(error: dict[str, Any]) -> str:
    """A pydantic error as one sentence: our validators' own text, or pydantic's with the JSON
    type that came when the type was wrong."""
    if error.get("type") == "value_error":
        return str(error["ctx"]["error"])
    message = error.get("msg", "invalid value")
    if str(error.get("type", "")).endswith("_type") and "input" in error:
        message += f", not {json_kind(error['input'])}"
    return message


async def _disconnected(request: Request) -> None:
    """Return once the client has gone: the ASGI server's ``http.disconnect``, the only message
    that comes after a body that has been read. Waiting for it, rather than polling between
    events, catches a client that leaves while its tokens keep coming."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("autodeco_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=self.registry)
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

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One answered request (:class:`CountRequests`); latency of the successful /v1 ones."""
        self.requests.labels(route, str(status)).inc()
        if route.startswith("/v1/") and status == 200:
            self.latency.labels(route).observe(seconds)


def create_app(
    scheduler: Scheduler, model_name: str, *, aliases: Iterable[str] = (), api_key: str | None = None,
    limits: Limits = Limits(), public_metrics: bool = False,
) -> FastAPI:
    """The server around a (started) :class:`Scheduler`, serving ``model_name``: requests may
    name it, one of ``aliases`` or no model; another name gets 404. ``api_key`` guards every
    route but /health (and /metrics, with ``public_metrics``)."""
    tokenizer: PreTrainedTokenizerBase = scheduler.tokenizer
    limit = context_length(scheduler.model)
    vocab = scheduler.model.config.get_text_config().vocab_size
    names = {model_name, *aliases}
    metrics = _Metrics(scheduler)
    tokenizing = ThreadPoolExecutor(limits.max_tokenizing, thread_name_prefix="autodeco-tokenize")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        tokenizing.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="autodeco", docs_url=None, redoc_url=None, lifespan=lifespan)
    # each add_middleware wraps the ones before: requests pass count -> catch errors -> read body -> key -> routes
    if api_key is not None:
        app.add_middleware(Authenticate, api_key=api_key, open_paths=frozenset({"/health", "/metrics"} if public_metrics else {"/health"}))
    app.add_middleware(ReadBody, limit=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(CatchErrors)
    app.add_middleware(CountRequests, routes=app.routes, observe=metrics.observe)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON", code="invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        if where is None:  # no body, or not an object (a form's Content-Type leaves it unparsed)
            return error(400, "the request body must be a JSON object, sent with Content-Type: application/json", code="invalid_json")
        return error(400, f"{where}: {_explain(first)}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's and FastAPI's own refusals, with a message that says what to do."""
        path = request.url.path
        message = {
            400: "the request body is not valid JSON (or not UTF-8, or nested too deeply); send a JSON object",  # FastAPI could not parse it
            404: f"there is no route {path}; use GET /v1/models, POST /v1/completions or POST /v1/chat/completions",
            405: f"{request.method} is not allowed on {path}",
        }.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, message, kind="invalid_request_error" if exc.status_code < 500 else "server_error", headers=exc.headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": scheduler.running, "queued": scheduler.queued}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "autodeco"}]}

    def unknown_model(name: str | None) -> JSONResponse | None:
        """404 for a model this server does not serve (None: the request named none)."""
        if name is None or name in names:
            return None
        return error(404, f"the model {name!r} does not exist here; this server serves {model_name!r} (GET /v1/models)", param="model", code="model_not_found")

    async def off_loop(work: Callable[[], T]) -> T:
        """``work`` (tokenising: seconds for a long prompt) on the tokenising threads, at most
        ``limits.max_tokenizing`` at once, while the event loop goes on answering."""
        return await asyncio.get_running_loop().run_in_executor(tokenizing, work)

    def piece(token_id: int) -> str:
        return tokenizer.decode([token_id])

    def token_budget(prompt_tokens: int, n: int, asked: int | None, default: int | None) -> int | JSONResponse:
        """max_tokens for each of the n choices: ``asked`` if it fits the context and n x asked
        fits ``limits.max_request_tokens``; if not asked, ``default`` (None: the room left in
        the context) cut to fit the context and each choice's share of that limit."""
        room = DEFAULT_MAX_TOKENS if limit is None else limit - prompt_tokens
        if room < 1:
            return error(400, f"the prompt has {prompt_tokens} tokens but the model's context is {limit}; shorten it", param="prompt", code="context_length_exceeded")
        cap = limits.max_request_tokens
        if asked is None:
            if n > cap:
                return error(400, f"n={n} is over this server's limit of {cap} tokens per request (--max-request-tokens); ask for fewer choices", param="n", code="request_too_large")
            return min(room, cap // n, default or room)
        if limit is not None and asked > room:
            return error(
                400, f"max_tokens={asked} does not fit: the context is {limit} tokens and the prompt takes {prompt_tokens}; "
                f"ask for at most {room}", param="max_tokens", code="context_length_exceeded",
            )
        if n * asked > cap:
            return error(
                400, f"n={n} x max_tokens={asked} = {n * asked} tokens is over this server's limit of {cap} per request "
                f"(--max-request-tokens); ask for at most {cap // n} tokens per choice, or fewer choices", param="max_tokens", code="request_too_large",
            )
        return asked

    def submit(prompt: list[int], body: protocol.GenerationRequest, logprobs: int | None) -> Job | JSONResponse:
        if any(not 0 <= t < vocab for t in prompt):
            return error(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        budget = token_budget(len(prompt), body.n, *body.token_ask())
        if isinstance(budget, JSONResponse):
            return budget
        job = Job(prompt, body.sampling_params(budget), logprobs, asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            return error(429, str(exc), kind="rate_limit_error", code="queue_full")
        except AutoDecoError as exc:
            return error(400, str(exc), param="n")
        return job

    async def collect(request: Request, job: Job) -> list[Completion] | JSONResponse:
        """Wait for every choice; cancel the job as soon as the client goes away meanwhile."""
        choices = [Completion("", [], "", len(job.prompt)) for _ in job.params]
        first = True
        client_gone = asyncio.ensure_future(_disconnected(request))
        try:
            while True:
                next_item = asyncio.ensure_future(job.events.get())
                await asyncio.wait({next_item, client_gone}, return_when=asyncio.FIRST_COMPLETED)
                if not next_item.done():
                    next_item.cancel()
                    scheduler.cancel(job)
                    return error(499, "the client closed the request")
                item = next_item.result()
                if item is None:
                    return choices
                if isinstance(item, AutoDecoError):
                    return error(400, str(item))
                if first:
                    metrics.first_token.observe(time.perf_counter() - job.submitted)
                    first = False
                choices[item.index].add(item)
        finally:
            client_gone.cancel()

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
        if (refused := unknown_model(body.model)) is not None:
            return refused
        text = body.prompt
        prompt = text if isinstance(text, list) else await off_loop(lambda: tokenizer(text).input_ids)
        job = submit(prompt, body, body.logprobs)
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
        if (refused := unknown_model(body.model)) is not None:
            return refused
        if not getattr(tokenizer, "chat_template", None):
            return error(400, "this model's tokenizer has no chat template, so it cannot take messages; send a prompt to /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        try:
            prompt = await off_loop(lambda: encode_prompts(tokenizer, [messages], chat=True)[0])
        except AutoDecoError as exc:
            return error(400, str(exc), param="messages")
        except Exception as exc:  # a chat template that rejects this conversation (e.g. role order)
            return error(400, f"the chat template rejected these messages: {exc}", param="messages")
        job = submit(prompt, body, (body.top_logprobs or 0) if body.logprobs else None)
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
