"""The HTTP edge: shed bad input before it costs memory, a database round trip or a worker.

Two layers, each bounding what the other cannot:

- `BoundedHttpToolsProtocol` (uvicorn's httptools protocol, used by `serve` and `dev`):
  uvicorn buffers a request's whole header block before the app sees it and has no
  limit of its own, so a 20 MB header would cost 20 MB (per connection). This protocol
  counts header bytes as they arrive and answers 431 once they pass MAX_HEADER_BYTES,
  so at most one socket read (≤ 256 KiB) above the limit is ever held. It also closes
  connections whose headers do not arrive within REQUEST_READ_TIMEOUT_SECONDS
  (slowloris), answering 408 when part of a request was sent; uvicorn has no header
  timeout of its own.
- ASGI middleware (work under any server, and in-process test clients):
  `RequestLimitsMiddleware` answers 431 for an oversized header block, 413 for a body
  over MAX_BODY_BYTES (from Content-Length before reading, else counting bytes as
  `receive()` delivers them, never buffering) and 408 when the body does not finish
  arriving within REQUEST_READ_TIMEOUT_SECONDS; `ResponseEnvelopeMiddleware` answers
  HEAD on every GET route, binds the request id and adds `X-Request-ID`,
  `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.

Closing a connection while the client is still sending makes the kernel reset it,
and a reset can destroy the answer before the client reads it. So a 413 or an ASGI
431 keeps the connection: uvicorn discards the rest of the body (never buffering it)
and the protocol bounds that discarding to REQUEST_READ_TIMEOUT_SECONDS. The
protocol's own 431/408 send the answer, half-close, and keep discarding what still
arrives for `LINGER_SECONDS` before closing (nginx's "lingering close"). A 408 from
the middleware closes at once: its client is not sending anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from payment_service.auth.caller import reset_caller, set_caller
from payment_service.errors import problem_response
from payment_service.observability import bind_request_id, request_id_of, reset_request_id
from payment_service.ratelimit import QUOTA_STATE_KEY, Quota

STATIC_PREFIX = "/static/"
_DISCONNECT: Message = {"type": "http.disconnect"}


LINGER_SECONDS = 2.0
"""How long the protocol keeps reading (and dropping) after refusing a request."""


class Rejection(NamedTuple):
    """One of the edge's problems: status, `type` slug, title and a detail template."""

    status: int
    type: str
    title: str
    detail: str
    close: bool = False

    def response(self, limit: object, path: str | None) -> Response:
        """The problem+json answer (with `Connection: close` where the client stalled)."""
        return problem_response(
            self.status,
            self.title,
            self.detail.format(limit=limit),
            type_=self.type,
            instance=path or None,
            headers={"Connection": "close"} if self.close else None,
        )


HEADERS_TOO_LARGE = Rejection(
    431,
    "request-header-fields-too-large",
    "Request Header Fields Too Large",
    "The request headers exceed {limit} bytes in total.",
)
BODY_TOO_LARGE = Rejection(
    413, "content-too-large", "Content Too Large", "The request body exceeds {limit} bytes."
)
READ_TIMEOUT = Rejection(
    408,
    "request-timeout",
    "Request Timeout",
    "The request did not arrive in full within {limit} seconds.",
    close=True,
)


def header_block_size(scope: Scope) -> int:
    """Bytes of the request line's target and the header fields, as sent on the wire."""
    size = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(
        scope.get("query_string", b"")
    )
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _has_framing_header(scope: Scope) -> bool:
    """Whether the request says a body follows (a Content-Length, valid or not, or a
    Transfer-Encoding)."""
    return any(
        name in (b"content-length", b"transfer-encoding") for name, _ in scope.get("headers", ())
    )


class RequestLimitsMiddleware:
    """431 / 413 / 408 problem+json before the app pays for a request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        read_timeout_seconds: float,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.read_timeout = read_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path")
        if header_block_size(scope) > self.max_header_bytes:
            response = HEADERS_TOO_LARGE.response(self.max_header_bytes, path)
            await response(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            response = BODY_TOO_LARGE.response(self.max_body_bytes, path)
            await response(scope, receive, send)
            return
        if length == 0 or (length is None and not _has_framing_header(scope)):
            # No body follows (HTTP/1.1 framing: no Content-Length, no Transfer-Encoding,
            # or a length of 0): nothing to bound or time out, so no wrappers (the GETs).
            await self.app(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        received = 0
        body_done = False
        started = False
        answered = False

        async def answer(rejection: Rejection, limit: object) -> Message:
            # Answer ourselves and tell the app the client is gone; whatever it sends
            # afterwards is dropped by `guarded_send`.
            nonlocal answered
            if not started and not answered:
                answered = True
                await rejection.response(limit, path)(scope, receive, send)
            answered = True
            return _DISCONNECT

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if answered:
                return _DISCONNECT
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await answer(READ_TIMEOUT, _seconds(self.read_timeout))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    return await answer(BODY_TOO_LARGE, self.max_body_bytes)
                if not message.get("more_body", False):
                    body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


def _seconds(value: float) -> str:
    return f"{value:g}"


_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


class ResponseEnvelopeMiddleware:
    """What wraps every request, in one pass: HEAD, the request id, the caller context,
    and the headers every response carries.

    - HEAD is served as GET with the body dropped (headers, Content-Length included,
      stay those of the GET), so /metrics, /health and /docs answer it as well and the
      OpenAPI document lists each route once.
    - The request id comes from `X-Request-ID` (or is made), is bound for logs and
      outgoing calls while the request runs, and is echoed on the response. An
      unhandled error is answered here, inside the request's context, so the 500
      carries the request id; nothing about the error reaches the client.
    - Every request starts with no caller and forgets it afterwards (in-process
      callers, as tests over ASGITransport, run requests in one task; without this one
      request's caller would still be bound during the next).
    - Responses get the RateLimit-* headers from the quota the route's auth check left
      in the scope state (routes return Response objects, so a dependency cannot add
      them), then `X-Request-ID`, `X-Content-Type-Options: nosniff` and
      `Cache-Control: no-store` (payment data stays out of shared caches; the docs'
      static assets may be cached).

    One middleware rather than four: each layer costs a call and a `send` wrapper per
    message on every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = dict(scope, method="GET")
        cacheable = scope.get("path", "").startswith(STATIC_PREFIX)
        state = scope.setdefault("state", {})
        request_id = request_id_of(scope)
        raw_id = request_id.encode("latin-1")
        started = False

        def finished(message: Message, quota: Quota | None) -> Message:
            headers = list(message.get("headers", ()))
            names = {name.lower() for name, _ in headers}
            if quota is not None:
                for name, value in quota.raw_headers():
                    if name not in names:
                        headers.append((name, value))
            headers.append((b"x-request-id", raw_id))
            if b"x-content-type-options" not in names:
                headers.append(_NOSNIFF)
            if not cacheable and b"cache-control" not in names:
                headers.append(_NO_STORE)
            return {**message, "headers": headers}

        async def send_enveloped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = finished(message, state.get(QUOTA_STATE_KEY))
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        async def send_error(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = finished(message, None)
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        id_token = bind_request_id(request_id)
        try:
            caller_token = set_caller(None)
            try:
                await self.app(scope, receive, send_enveloped)
            finally:
                reset_caller(caller_token)
        except Exception as error:
            if started:
                logging.getLogger("payment_service.errors").exception(
                    "unhandled error", extra={"path": scope.get("path")}
                )
                raise
            from payment_service.errors import last_resort_response

            response = last_resort_response(error, scope.get("path", ""))
            await response(scope, receive, send_error)
        finally:
            reset_request_id(id_token)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and a header read timeout.

    Two counts bound a header block: the bytes of reads that ended inside it (so a
    single huge header is refused while it streams in, before httptools has collected
    it) and the exact bytes of the URL and fields the parser reports (for a block that
    arrived in one read). Configured through class attributes, as uvicorn instantiates
    the protocol itself: see `configure_protocol`.
    """

    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True
        self._wire_bytes = 0
        self._field_bytes = 0
        self._rejected = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._discard_timer: asyncio.TimerHandle | None = None
        self._body_done = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_discard_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        reading_headers = self._reading_headers
        super().data_received(data)
        if reading_headers and self._reading_headers and not self._rejected:
            self._wire_bytes += len(data)  # this whole read belongs to an unfinished block
            if self._wire_bytes > self.max_header_bytes:
                self._reject(HEADERS_TOO_LARGE, self.max_header_bytes)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._wire_bytes = self._field_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._body_done = False
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        # HEAD answers have no body write to carry the head: those keep uvicorn's own.
        if cycle is not None and self.scope["method"] != "HEAD":
            cycle.transport = HeadWithBody(self.transport, cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True
        self._body_done = True
        self._wire_bytes = self._field_bytes = 0
        if self._discard_timer is not None:  # the refused body is over: idle as usual
            self._cancel_discard_timer()
            self._arm_keep_alive()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._body_done and not self.transport.is_closing():
            # Answered (a 413) before the body finished: uvicorn drops the rest as it
            # arrives; give that as long as a body may take, then close.
            self._discard_timer = self.loop.call_later(
                self.header_timeout_seconds, self._discard_timeout
            )

    def _discard_timeout(self) -> None:
        self._discard_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_discard_timer(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def _arm_keep_alive(self) -> None:
        # data_received cancelled uvicorn's keep-alive timer while the body was dropped.
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:  # else the parser stopped on our own limit, already answered
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > self.max_header_bytes and not self._rejected:
            self._reject(HEADERS_TOO_LARGE, self.max_header_bytes)
            raise _HeaderLimitExceededError  # stops the parser (uvicorn then calls send_400)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._rejected or not self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is in the app: the body timeout and keep-alive apply
        if self._wire_bytes or self._field_bytes:
            self._reject(READ_TIMEOUT, _seconds(self.header_timeout_seconds))
        else:  # a connection that never sent a byte of a request: just close it
            self._rejected = True
            self.transport.close()

    def _reject(self, rejection: Rejection, limit: object) -> None:
        """Answer with the problem document and close, straight on the transport."""
        self._rejected = True
        self._cancel_header_timer()
        response = rejection._replace(close=True).response(limit, None)
        head = [f"HTTP/1.1 {rejection.status} {rejection.title}\r\n".encode()]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [name + b": " + value + b"\r\n" for name, value in response.raw_headers]
        head += [b"cache-control: no-store\r\n", b"x-content-type-options: nosniff\r\n\r\n"]
        self.transport.write(b"".join(head) + bytes(response.body))
        # Half-close and keep reading (data_received drops it) for a moment, so what the
        # client is still sending does not turn into a reset that destroys this answer.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
        self.logger.warning(
            "request rejected at the edge",
            extra={"status": rejection.status, "reason": rejection.type},
        )


class _HeaderLimitExceededError(Exception):
    """Raised from a parser callback to stop parsing an oversized header block."""


class HeadWithBody:
    """The transport as one response cycle sees it: the status line and headers leave
    with the first body bytes, in one write.

    uvicorn writes the head on `http.response.start` and the body on
    `http.response.body`: two send(2) calls and two TCP segments for every answer
    (one syscall was 11 % of a `/health/live` profile). Writes before the response
    starts (`100 Continue`) and after the first body write pass straight through;
    closing sends a head still held.
    """

    __slots__ = ("_cycle", "_head", "_passing", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._passing = False

    def write(self, data: bytes) -> None:
        if self._passing:
            self._transport.write(data)
        elif self._head is not None:  # the first body bytes: together with the head
            self._passing = True
            head, self._head = self._head, None
            self._transport.write(head + data)
        elif self._cycle is not None and self._cycle.response_started:
            # The head: hold it for the body. Let go of the cycle, which holds this
            # transport: a reference cycle per request is garbage only the collector
            # frees, and its full passes (60-110 ms each under load) stalled the loop.
            self._head = data
            self._cycle = None
        else:  # `100 Continue`, before the response
            self._transport.write(data)

    def close(self) -> None:
        self._cycle = None
        if self._head is not None:
            head, self._head = self._head, None
            self._passing = True
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def configure_protocol(
    *, max_header_bytes: int, header_timeout_seconds: float
) -> type[asyncio.Protocol]:
    """A `BoundedHttpToolsProtocol` subclass carrying these limits, for uvicorn's `http=`.

    The class is also this module's `ConfiguredHttpToolsProtocol`, so uvicorn can pickle
    its config for `--workers N` (spawned workers look the class up by name; there the
    module's `__getattr__` rebuilds it from the same settings, inherited through the
    environment).
    """
    configured = type(
        "ConfiguredHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "__module__": __name__,
            "max_header_bytes": max_header_bytes,
            "header_timeout_seconds": header_timeout_seconds,
        },
    )
    globals()["ConfiguredHttpToolsProtocol"] = configured
    return configured


def __getattr__(name: str) -> Any:
    if name == "ConfiguredHttpToolsProtocol":  # a spawned uvicorn worker unpickling its config
        from payment_service.settings import load_settings

        settings = load_settings()
        return configure_protocol(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.request_read_timeout_seconds,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
