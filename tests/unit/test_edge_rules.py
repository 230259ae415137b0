"""The edge's rules on their own: what counts as a database outage, log redaction,
safe text and money, and the header-size arithmetic."""

from __future__ import annotations

import asyncio
import gc
import logging
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from payment_service.edge import HeadWithBody, header_block_size
from payment_service.errors import is_database_unavailable
from payment_service.observability import RedactingJsonFormatter, redact
from payment_service.schemas.payment import ChargeRequest
from payment_service.schemas.refund import RefundRequest


def _raised_in_sqlalchemy(exc: BaseException) -> BaseException:
    """`exc` with a traceback through a sqlalchemy module, as the driver raises it."""
    namespace = {"__name__": "sqlalchemy.pool.fake", "exc": exc}
    exec("def boom():\n    raise exc\n", namespace)
    try:
        namespace["boom"]()
    except BaseException as raised:
        return raised
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "exc",
    [
        sa_exc.DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True),
        sa_exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"),
        sa_exc.InterfaceError("SELECT 1", None, Exception("connection is closed")),
        sa_exc.OperationalError("SELECT 1", None, Exception("server closed the connection")),
        sa_exc.DBAPIError("SELECT 1", None, asyncpg.CannotConnectNowError("starting up")),
        sa_exc.DBAPIError("SELECT 1", None, asyncpg.AdminShutdownError("terminating")),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        _raised_in_sqlalchemy(ConnectionRefusedError(111, "Connect call failed")),
        _raised_in_sqlalchemy(TimeoutError()),
    ],
)
def test_connection_problems_are_outages(exc: BaseException) -> None:
    assert is_database_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        sa_exc.IntegrityError("INSERT", None, Exception("duplicate key")),
        sa_exc.DataError("INSERT", None, Exception("invalid byte sequence")),
        ValueError("a bug"),
        ConnectionRefusedError(111, "raised by our own code, not the driver"),
        TimeoutError(),
    ],
)
def test_other_errors_are_not_outages(exc: BaseException) -> None:
    assert not is_database_unavailable(exc)


def test_an_outage_wrapped_in_another_error_is_found() -> None:
    try:
        try:
            raise asyncpg.ConnectionDoesNotExistError("closed in the middle")
        except asyncpg.PostgresError as inner:
            raise RuntimeError("while recording") from inner
    except RuntimeError as outer:
        assert is_database_unavailable(outer)


def test_redact_removes_parameters_constraint_values_and_credentials() -> None:
    line = (
        "(sqlalchemy.dialects.postgresql.asyncpg.IntegrityError) duplicate key\n"
        "DETAIL:  Key (operation, client_id, key)=(charge, default, load0-722f91) exists.\n"
        "[SQL: INSERT INTO idempotency_keys ...]\n"
        "[parameters: ('charge', 'default', 'load0-722f91', 'abc')]\n"
        "Authorization: Bearer sk_live_0123456789 postgresql://app:hunter2@db/payments"
    )
    clean = redact(line)
    for secret in ("load0-722f91", "sk_live_0123456789", "hunter2"):
        assert secret not in clean
    assert "[parameters: redacted]" in clean and "Key (operation, client_id, key)=" in clean


def test_the_json_formatter_redacts_tracebacks_too() -> None:
    formatter = RedactingJsonFormatter("{message}", style="{")
    try:
        raise RuntimeError("[parameters: ('charge', 'secret-key-123')]")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, sys.exc_info())
    assert "secret-key-123" not in formatter.format(record)


@pytest.mark.parametrize("amount", ["1e12", 1e15, "NaN", "-Infinity", Decimal("1E+27")])
def test_refund_amounts_beyond_12_integer_digits_or_not_finite_are_refused(
    amount: object,
) -> None:
    with pytest.raises(ValidationError):
        RefundRequest.model_validate({"amount": amount})


@pytest.mark.parametrize("amount", ["999999999999.99", "0.01", 10, "0.001", "-5"])
def test_refund_amounts_within_12_digits_pass_the_schema(amount: object) -> None:
    # Sign and decimals are the service's to judge (its 422 names what remains).
    assert RefundRequest.model_validate({"amount": amount}).amount is not None


def test_metadata_at_stripes_limits_is_accepted() -> None:
    metadata = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(20)}
    request = ChargeRequest.model_validate({"trip_id": 1, "method": "CARD", "metadata": metadata})
    assert request.metadata == metadata


def test_header_block_size_counts_target_and_fields() -> None:
    scope = {
        "path": "/v1/payments",
        "raw_path": b"/v1/payments",
        "query_string": b"limit=1",
        "headers": [(b"host", b"x")],
    }
    assert header_block_size(scope) == len(b"/v1/payments") + len(b"limit=1") + 4 + 1 + 4


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


class _Cycle:
    response_started = False


def test_the_head_leaves_with_the_first_body_bytes_in_one_write() -> None:
    transport, cycle = _RecordingTransport(), _Cycle()
    writer = HeadWithBody(transport, cycle)  # type: ignore[arg-type]

    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: at once
    cycle.response_started = True
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the head: held
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    writer.write(b"first")
    writer.write(b"second")
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\nfirst", b"second"]
    assert writer.get_extra_info("peername") == "info:peername"  # the rest passes through


def test_closing_sends_a_head_still_held() -> None:
    transport, cycle = _RecordingTransport(), _Cycle()
    writer = HeadWithBody(transport, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")

    writer.close()  # the app failed after starting its answer

    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
    assert transport.closed and writer.is_closing()


def test_the_head_writer_lets_go_of_its_response_cycle() -> None:
    """The cycle holds its transport; a transport holding the cycle back would make
    every request garbage that only the collector's passes (which stop the loop) free."""
    transport, cycle = _RecordingTransport(), _Cycle()
    writer = HeadWithBody(transport, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert gc.get_referents(writer).count(cycle) == 0
    writer.write(b"body")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]

    unanswered = HeadWithBody(_RecordingTransport(), _Cycle())  # type: ignore[arg-type]
    unanswered.close()
    assert not [ref for ref in gc.get_referents(unanswered) if isinstance(ref, _Cycle)]


async def test_requests_over_the_configured_protocol_leave_no_garbage_cycles() -> None:
    """Served over real HTTP (uvicorn with edge's protocol), a request's objects are freed
    by reference counting alone: none of its response cycles waits for the collector."""
    from uvicorn import Config, Server
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from payment_service.edge import configure_protocol

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    protocol = configure_protocol(max_header_bytes=8192, header_timeout_seconds=5.0)
    server = Server(
        Config(app, host="127.0.0.1", port=0, http=protocol, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn's Server offers a flag, no event)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    gc.collect()
    gc.disable()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(20):
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = await reader.readuntil(b"\r\n\r\nok")
            assert answer.startswith(b"HTTP/1.1 200"), answer
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        left = [obj for obj in gc.get_objects() if isinstance(obj, RequestResponseCycle)]
        assert len(left) <= 1, f"{len(left)} response cycles wait for the collector"
    finally:
        gc.enable()
        server.should_exit = True
        await serving
