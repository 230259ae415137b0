"""The edge against a real `payment-service serve` (issue 9, items 4-7).

Each attack of the issue, measured on the real process: a 300 MB body (413 while the
server's peak RSS stays bounded), a 20 MB header (431 from the uvicorn protocol),
slow half-sent requests (408 and closed), HEAD, no `Server` header, the logs (no full
idempotency key, no SQL parameters, no bearer token), and a PostgreSQL restart under
concurrent load (only 2xx or 503, then healing without restarting the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from payment_sandbox.runner import Sandbox
from tests.conftest import SEED_FILE
from tests.e2e.conftest import (
    ServiceProcess,
    StartProcess,
    ThrowawayPostgres,
    free_port,
    run_cli,
    service_env,
    wait_until,
)

RSS_BOUND_KB = 200 * 1024
ATTACK_BODY_BYTES = 300 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0])
    return fields


async def raw_request(
    port: int, head: bytes, *, stream: Iterator[bytes] = iter(()), read_timeout: float = 15
) -> bytes:
    """Send `head` and then `stream` over a plain socket, stopping when the server closes or
    answers; return whatever the server sent (b"" if it only closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(head)
            await writer.drain()
            for chunk in stream:
                writer.write(chunk)
                await writer.drain()
                if reader.at_eof() or len(reader._buffer) > 0:  # type: ignore[attr-defined]
                    break
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(65536), read_timeout)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response.split(b" ", 2)[1])


# -- memory and size limits -----------------------------------------------------


async def test_300_mb_body_is_413_and_the_server_stays_small(
    service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    """A charge with a 300 MB `pad`, streamed (chunked, then with Content-Length): 413 both
    times, and the server's peak RSS stays under 200 MB (it was 952 MB)."""
    before = memory_kb(service.pid)

    prefix = b'{"idempotency_key": "big", "trip_id": 1001, "method": "CARD", "pad": "'

    async def body() -> AsyncIterator[bytes]:
        yield prefix
        for _ in range(ATTACK_BODY_BYTES // len(CHUNK)):
            yield CHUNK
        yield b'"}'

    chunked = await api.post(
        "/v1/payments/charge", content=body(), headers={"content-type": "application/json"}
    )
    declared = await api.post(
        "/v1/payments/charge",
        content=body(),
        headers={
            "content-type": "application/json",
            "content-length": str(len(prefix) + ATTACK_BODY_BYTES + 2),
        },
    )
    after = memory_kb(service.pid)
    print(f"serve memory before {before}, after two 300 MB bodies {after} (kB)")

    for response in (chunked, declared):
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/content-too-large")
    assert after["VmHWM"] < RSS_BOUND_KB, after
    assert (await api.get("/health")).status_code == 200


async def test_20_mb_header_is_431_from_the_protocol(
    service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    """A 20 MB header is refused while it streams in (uvicorn would buffer all of it)."""
    head = b"GET /v1/payments HTTP/1.1\r\nHost: x\r\nX-Big: "
    stream = (b"a" * 65536 for _ in range(20 * 16))
    response = await raw_request(service.port or 0, head, stream=stream)
    after = memory_kb(service.pid)
    print(f"serve memory after a 20 MB header: {after} (kB)")

    assert status_of(response) == 431, response[:200]
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["type"].endswith("/request-header-fields-too-large")
    assert after["VmHWM"] < RSS_BOUND_KB
    # Many headers that are small one by one count in total.
    many = {f"x-h{i}": "v" * 1000 for i in range(20)}
    assert (await api.get("/v1/payments", headers=many)).status_code == 431
    assert (await api.get("/v1/payments?limit=1")).status_code == 200


@pytest.mark.service_env(REQUEST_READ_TIMEOUT_SECONDS="1")
async def test_slow_half_sent_requests_are_408_and_closed(
    service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    """Slowloris: 50 requests whose headers never finish and 50 whose body never does are
    all answered 408 and closed after REQUEST_READ_TIMEOUT_SECONDS (they were kept 60 s);
    the service keeps answering meanwhile."""
    port = service.port or 0
    started = time.monotonic()
    slow_headers = [
        raw_request(port, b"GET /v1/payments HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        for _ in range(50)
    ]
    slow_bodies = [
        raw_request(
            port,
            b"POST /v1/payments/charge HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        for _ in range(50)
    ]
    pending = asyncio.gather(*slow_headers, *slow_bodies)
    await asyncio.sleep(0.3)
    assert (await api.get("/health/live")).status_code == 200
    answers = await pending
    elapsed = time.monotonic() - started

    assert {status_of(answer) for answer in answers} == {408}, answers[:2]
    assert elapsed < 10  # closed after ~1 s, not 60
    assert (await api.get("/v1/payments?limit=1")).status_code == 200


async def test_head_and_no_server_header_over_real_http(
    service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    for path in ("/health", "/v1/payments", "/v1/payments/1", "/metrics", "/docs"):
        response = await api.head(path)
        assert response.status_code == 200, path
        assert response.content == b""
        assert "server" not in response.headers
        assert response.headers.get("cache-control") == "no-store"
    assert "server" not in (await api.get("/nope")).headers


async def test_answers_arrive_whole_and_100_continue_still_comes_first(
    service: ServiceProcess,
) -> None:
    """With the head held for the body (edge.HeadWithBody), answers arrive whole over
    real HTTP, and a request that asks `Expect: 100-continue` still gets its interim
    answer before it sends the body."""
    port = int(service.base_url.rsplit(":", 1)[1])
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            first = await asyncio.wait_for(reader.read(65536), 5)
            assert first.startswith(b"HTTP/1.1 200 "), first
            assert first.endswith(b'{"status":"UP"}'), first  # the body came with the head
        finally:
            writer.close()

    body = b'{"trip_id": 0, "method": "CARD"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/payments/charge HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nIdempotency-Key: e100\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status_of(final) == 422, final  # trip_id 0 is refused by the schema
    finally:
        writer.close()


# -- logs -------------------------------------------------------------------------


@pytest.mark.service_env(LOG_LEVEL="DEBUG", ACCESS_LOG="true")
async def test_logs_hold_no_keys_sql_parameters_or_tokens(
    service: ServiceProcess, api: httpx.AsyncClient, e2e_database: URL
) -> None:
    """Charges, replays, a reused key, refunds, bad input and a database outage, at DEBUG:
    the full log has no full idempotency key, no SQL parameters and no bearer token."""
    marker = uuid.uuid4().hex
    keys = [f"edge-log-{marker}-{n}" for n in range(6)]
    token = f"sk_test_{marker}"
    auth = {"Authorization": f"Bearer {token}"}
    trip = 1_000_000 + int(marker[:6], 16)

    charge = {"idempotency_key": keys[0], "trip_id": trip, "method": "CARD"}
    # An unknown key is refused (the service runs with AUTH_REQUIRED=false, but a key that
    # is sent is still checked): the refusal must not log the token either.
    refused = await api.post("/v1/payments/charge", json=charge, headers=auth)
    assert refused.status_code == 401, refused.text
    first = await api.post("/v1/payments/charge", json=charge)
    assert first.status_code == 201, first.text
    assert (await api.post("/v1/payments/charge", json=charge)).status_code == 201  # replay
    reused = dict(charge, method="UPI")
    assert (await api.post("/v1/payments/charge", json=reused)).status_code == 422
    other = {"trip_id": trip, "method": "CARD"}
    paid = await api.post("/v1/payments/charge", json=other, headers={"Idempotency-Key": keys[1]})
    assert paid.status_code == 409
    payment_id = first.json()["payment_id"]
    refund = {"idempotency_key": keys[2], "amount": 1}
    assert (await api.post(f"/v1/payments/{payment_id}/refund", json=refund)).status_code == 200
    nul = {"idempotency_key": keys[3] + "\x00", "trip_id": trip, "method": "CARD"}
    assert (await api.post("/v1/payments/charge", json=nul)).status_code == 422

    # A database outage while keys are in use: the errors logged must not carry them.
    from tests.conftest import admin_sql

    server = e2e_database.set(database="postgres")
    await admin_sql(
        server,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{e2e_database.database}' AND application_name = 'payment-service'",
    )
    after_kill = await api.post(
        "/v1/payments/charge",
        json={"idempotency_key": keys[4], "trip_id": trip + 1, "method": "CARD"},
    )
    assert after_kill.status_code in {201, 503}, after_kill.text

    await asyncio.sleep(0.5)  # let the last lines reach the log file
    logs = service.log_text()
    assert "/v1/payments/charge" in logs  # the access log is there
    for key in keys:
        assert key not in logs, key
    assert marker not in logs
    assert "[parameters:" not in logs
    assert token not in logs


# -- a database restart under load ---------------------------------------------------


async def test_database_restart_under_load_is_503_never_500_and_heals(
    own_postgres: ThrowawayPostgres, peers: Sandbox, start_process: StartProcess, tmp_path: Path
) -> None:
    """Concurrent reads and charges while PostgreSQL stops for ~2 s and starts again:
    every answer is 2xx or a 503 problem with Retry-After (328 of 1,709 were 500s), and
    afterwards requests succeed without restarting the service."""
    from tests.e2e.conftest import hermetic_env, plain_url

    url = own_postgres.url
    env = hermetic_env(DATABASE_URL=plain_url(url), LOG_LEVEL="WARNING")
    cwd = tmp_path / "cli"
    cwd.mkdir()
    assert (await run_cli("migrate", env=env, cwd=cwd)).returncode == 0
    assert (await run_cli("seed", "--file", str(SEED_FILE), env=env, cwd=cwd)).returncode == 0
    port = free_port()
    service = await start_process(
        "serve",
        env=service_env(url, peers, port, DB_POOL_SIZE="5", DB_CONNECT_TIMEOUT_SECONDS="2"),
        name="serve-restart",
        port=port,
        healthy=True,
    )

    statuses: dict[int, int] = {}
    bad: list[str] = []
    stop = asyncio.Event()
    trips = iter(range(1_500_000_000 + (uuid.uuid4().int % 1000) * 10_000, 2_000_000_000))

    async def client_loop(n: int) -> None:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=20) as http:
            while not stop.is_set():
                try:
                    if n % 4 == 0:
                        trip = next(trips)
                        body = {"idempotency_key": f"restart-{trip}", "trip_id": trip,
                                "method": "CASH"}  # fmt: skip
                        response = await http.post("/v1/payments/charge", json=body)
                    else:
                        response = await http.get("/v1/payments", params={"limit": 5})
                except httpx.TransportError as exc:
                    bad.append(f"transport error {exc!r}")
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 503:
                    if "retry-after" not in response.headers:
                        bad.append(f"503 without Retry-After: {response.text}")
                elif not 200 <= response.status_code < 300:
                    bad.append(f"{response.status_code}: {response.text[:300]}")
                await asyncio.sleep(0.005)

    clients = [asyncio.create_task(client_loop(n)) for n in range(8)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(own_postgres.stop)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(own_postgres.start)
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*clients)
    print(f"statuses during the restart: {statuses}")

    assert not bad, bad[:5]
    assert statuses.get(503, 0) > 0  # the outage was seen ...
    assert sum(v for k, v in statuses.items() if 200 <= k < 300) > 0

    async def healthy_again() -> bool:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as http:
            reads = [await http.get("/v1/payments", params={"limit": 1}) for _ in range(10)]
            return all(r.status_code == 200 for r in reads)

    await wait_until(healthy_again, 10, "reads to succeed after the restart")
    assert service.running and service.starts == 1
    logs = service.log_text()
    assert "Exception in ASGI application" not in logs
    # The outage's errors were logged (with tracebacks) without keys or SQL parameters.
    assert "database unavailable" in logs
    assert "restart-" not in logs
    assert "[parameters:" not in logs
