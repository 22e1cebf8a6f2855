"""The HTTP layer under the routes: ASGI middlewares with one job each, and uvicorn's settings.

The middlewares are plain ASGI, not Starlette's ``BaseHTTPMiddleware``: that one hides a client's
disconnect from the handlers, so a non-streaming request would decode to its end for nobody.
Outermost first: :class:`CountRequests` (metrics by route template), :class:`CatchErrors` (a
generic 500, logged), :class:`ReadBody` (framing, size and time limits on the request body),
:class:`Authenticate` (the API key).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from autodeco.errors import AutoDecoError
from autodeco.serving import protocol

logger = logging.getLogger("autodeco.serving")

MAX_HEADER_BYTES = 16 * 1024  # request line and headers together; more gets uvicorn's 400


@dataclass(frozen=True)
class Limits:
    """What one request or connection may take (``autodeco serve`` flags set them)."""

    max_body_bytes: int = 1 << 20
    max_request_tokens: int = 65_536  # n x max_tokens: the tokens one request may ask for
    body_timeout_s: float = 30.0  # for the whole request body, once its headers are in
    header_timeout_s: float = 10.0  # for a request's headers, from the connection or the last response
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 1024  # open connections (or requests in progress); a request past it gets 503
    max_tokenizing: int = 2  # prompts tokenised at once, on threads beside the event loop


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None,
    *, close: bool = False, headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error JSON with ``status``; ``close`` ends the connection after it (for a reply
    sent before the request's body was read)."""
    headers = {**(headers or {}), **({"connection": "close"} if close else {})}
    return JSONResponse(protocol.error_body(message, kind, param, code), status_code=status, headers=headers)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route that takes this request (``/v1/completions``; a route that
    matches all but the method counts), or "unmatched"."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", "unmatched")
    return "unmatched"


class CountRequests:
    """Calls ``observe(route, status, seconds)`` once each HTTP request is answered: ``route`` is
    its route template, so made-up paths share one label and cannot grow the metrics; status 499
    means the client left before an answer."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], observe: Callable[[str, int, float], None]) -> None:
        self.app, self.routes, self.observe = app, routes, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 499

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.observe(route_template(self.routes, scope), status, time.perf_counter() - start)


class CatchErrors:
    """An exception that escapes the app becomes a generic 500: the details go to the log, not
    to the client, and the connection stays open for its next request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("internal error answering %s %s", scope["method"], scope["path"])
            if not started:  # else the reply is cut short, and the server closes the connection
                message = "internal server error; the server logged the cause. Retry, or report it with the request that caused it"
                await error_response(500, message, kind="server_error")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class ReadBody:
    """Reads the whole request body before the app runs: 400 for both Content-Length and
    Transfer-Encoding (the two framings disagree), 413 past ``limit`` bytes (declared, or counted
    as a chunked body arrives), 408 if it has not all arrived within ``timeout_s``. The app then
    reads it from memory; the server's later messages (``http.disconnect``) reach it as they come."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if b"content-length" in headers and b"transfer-encoding" in headers:
            message = "the request has both Content-Length and Transfer-Encoding headers; send one of them"
            return await error_response(400, message, code="invalid_framing", close=True)(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        try:
            if declared.isdigit() and int(declared) > self.limit:
                raise _BodyTooLarge
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive)
        except _BodyTooLarge:
            message = f"the request body is over {self.limit} bytes; send a shorter prompt"
            return await error_response(413, message, code="request_too_large", close=True)(scope, receive, send)
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_s:g} s; send it at once after the headers"
            return await error_response(408, message, code="request_timeout", close=True)(scope, receive, send)
        if body is None:
            return  # the client left mid-body: nobody to answer
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The body, or None if the client disconnects first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class Authenticate:
    """401 for a request without ``Authorization: Bearer <api_key>`` (the scheme in any case, as
    HTTP has it), except on ``open_paths``."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app, self.key, self.open_paths = app, api_key.encode(), open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorised(scope):
            return await self.app(scope, receive, send)
        message = "invalid or missing API key: send the header 'Authorization: Bearer <key>'"
        await error_response(401, message, kind="authentication_error", code="invalid_api_key")(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)


class _H11WithHeaderTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's headers. uvicorn has none: a
    client that trickles header bytes (its keep-alive timer restarts on every byte) would hold
    its connection for ever. The deadline runs from the connection, or from the last response,
    until the headers are complete; past it the connection is closed."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Arm the deadline while the client owes a request's headers (h11's IDLE); disarm it once they are in."""
        owed = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if owed and self.header_deadline is None:
            self.header_deadline = self.loop.call_later(self.header_timeout_s, self.transport.close)
        elif not owed and self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None


def server_config(app: ASGIApp, limits: Limits, *, forwarded_allow_ips: str | None = None, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for ``app``: the header timeout, keep-alive and connection cap of
    ``limits``; ``X-Forwarded-For`` is believed only from ``forwarded_allow_ips`` (None: from no one)."""
    return uvicorn.Config(
        app, http=functools.partial(_H11WithHeaderTimeout, header_timeout_s=limits.header_timeout_s),  # type: ignore[arg-type]
        timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEADER_BYTES, proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips, server_header=False, log_level=log_level,
    )


def resolve_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """(address family, socket address) to listen on ``host``:``port`` (0: any free port), or
    an error naming the bad port or the host that does not resolve."""
    if not 0 <= port <= 65535:
        raise AutoDecoError(f"--port {port} is not a TCP port; use 1-65535 (or 0 for any free port)")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise AutoDecoError(f"--host {host!r} does not resolve ({reason}); give an IP address such as 127.0.0.1 or a known host name") from None
    return family, address


def listen_socket(family: socket.AddressFamily, address: tuple[Any, ...]) -> socket.socket:
    """A TCP socket bound to ``address`` (from :func:`resolve_address`) for
    ``uvicorn.Server.run``: a port in use is one clear error, not a log line from uvicorn."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise AutoDecoError(f"cannot listen on {address[0]} port {address[1]} ({error.strerror}); choose another --port, or free this one") from None
    return sock
