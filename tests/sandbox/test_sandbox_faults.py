"""Fault injection: slow, fail, flaky and down, from Python and over the control APIs."""

import asyncio
import json
import time

import httpx
import pytest

from payment_sandbox import FaultMode, FaultSwitch, Sandbox


def _trip(sandbox: Sandbox, trip_id: int = 1) -> str:
    return f"{sandbox.trip_url}/v1/trips/{trip_id}"


async def test_slow_peer_answers_after_the_delay(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Slow mode delays the answer (checked loosely) and then answers normally."""
    await sandbox.set_fault("trip", "slow")

    started = time.perf_counter()
    response = await client.get(_trip(sandbox))
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= sandbox.config.delay_seconds * 0.8


async def test_slow_delay_can_be_set_over_http(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    """PUT /_sandbox/faults on the peer sets slow mode with its own delay."""
    answer = await client.put(
        f"{sandbox.notification_url}/_sandbox/faults", json={"mode": "slow", "delay_seconds": 0.2}
    )

    started = time.perf_counter()
    response = await client.post(f"{sandbox.notification_url}/v1/notifications", json={})

    assert answer.json()["mode"] == "slow"
    assert answer.json()["delay_seconds"] == 0.2
    assert response.status_code == 202
    assert time.perf_counter() - started >= 0.15


async def test_fail_answers_500_problem_json_by_default(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Fail mode answers the default status with a problem body saying it was injected."""
    await sandbox.set_fault("trip", "fail")

    response = await client.get(_trip(sandbox))

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 500
    assert "injected fail fault" in problem["detail"]
    assert sandbox.trips.get_requests == 1


async def test_fail_status_is_configurable_over_http(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """The peer's own fault endpoint sets the failing status."""
    await client.put(
        f"{sandbox.notification_url}/_sandbox/faults", json={"mode": "fail", "status_code": 503}
    )

    response = await client.post(f"{sandbox.notification_url}/v1/notifications", json={"n": 1})

    assert response.status_code == 503
    assert sandbox.notifications.notifications == []


async def test_faults_leave_setup_and_inspection_endpoints_alone(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """While failing, a test can still PUT trips and read deliveries."""
    await sandbox.set_fault("trip", "fail")
    await sandbox.set_fault("notification", "fail")

    put = await client.put(_trip(sandbox, 5100), json={"status": "COMPLETED"})
    listed = await client.get(f"{sandbox.notification_url}/v1/notifications")

    assert put.status_code == 201
    assert listed.status_code == 200


async def test_flaky_fails_n_requests_then_recovers(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Flaky N fails exactly the next N lookups, then the peer is normal again."""
    await sandbox.set_fault("trip", "flaky", count=2, status_code=503)

    statuses = [(await client.get(_trip(sandbox))).status_code for _ in range(4)]

    assert statuses == [503, 503, 200, 200]
    fault = sandbox.peer_status("trip")["fault"]
    assert fault["mode"] == "normal"
    assert fault["injected_failures"] == 2


async def test_down_refuses_connections_and_up_restores_the_same_port(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Down closes the port (connect error, also for a pooled connection); up reopens it."""
    url = sandbox.trip_url
    assert (await client.get(_trip(sandbox))).status_code == 200

    await sandbox.down("trip")
    with pytest.raises(httpx.ConnectError):
        await client.get(_trip(sandbox))
    assert sandbox.peer_status("trip")["listening"] is False

    await sandbox.up("trip")
    response = await client.get(_trip(sandbox))

    assert response.status_code == 200
    assert sandbox.trip_url == url


async def test_control_server_takes_a_peer_down_and_up(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """PUT /{peer}/faults on the control server does down and up over HTTP."""
    notify = f"{sandbox.notification_url}/v1/notifications"

    down = await client.put(f"{sandbox.control_url}/notification/faults", json={"mode": "down"})
    with pytest.raises(httpx.ConnectError):
        await client.post(notify, json={})
    status = (await client.get(f"{sandbox.control_url}/")).json()
    up = await client.put(f"{sandbox.control_url}/notification/faults", json={"mode": "up"})
    delivered = await client.post(notify, json={})

    assert down.status_code == 200
    assert down.json()["listening"] is False
    assert down.json()["fault"]["mode"] == "down"
    assert status["notification"]["listening"] is False
    assert status["trip"]["listening"] is True
    assert up.json()["fault"]["mode"] == "normal"
    assert delivered.status_code == 202


async def test_any_mode_brings_a_down_peer_back(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Setting fail on a down peer reopens its port in fail mode."""
    await sandbox.down("trip")

    answer = await client.put(
        f"{sandbox.control_url}/trip/faults", json={"mode": "fail", "status_code": 502}
    )

    assert answer.json()["listening"] is True
    assert (await client.get(_trip(sandbox))).status_code == 502


async def test_down_cuts_an_in_flight_slow_request(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Taking a peer down does not wait for a slow request; that request loses its connection."""
    await sandbox.set_fault("trip", "slow", delay_seconds=30)
    pending = asyncio.create_task(client.get(_trip(sandbox)))
    for _ in range(500):  # until the request is inside the handler, at most 5 s
        if sandbox.trips.get_requests:
            break
        await asyncio.sleep(0.01)

    started = time.perf_counter()
    await sandbox.down("trip")

    assert time.perf_counter() - started < 5
    with pytest.raises(httpx.TransportError):
        await pending


async def test_peer_refuses_down_and_up_on_its_own_port(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Down/up belong to the control server: the peer answers 409 and keeps listening."""
    for mode in ("down", "up"):
        response = await client.put(f"{sandbox.trip_url}/_sandbox/faults", json={"mode": mode})

        assert response.status_code == 409
        assert "control server" in response.json()["detail"]
    assert sandbox.peer_status("trip")["listening"] is True


async def test_fault_bodies_need_no_content_type(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A bare `curl -d '{...}'` (form content type) is read as JSON on both control APIs."""
    form = {"content-type": "application/x-www-form-urlencoded"}

    on_peer = await client.put(
        f"{sandbox.trip_url}/_sandbox/faults", content=b'{"mode": "fail"}', headers=form
    )
    on_control = await client.put(
        f"{sandbox.control_url}/notification/faults", content=b'{"mode": "down"}', headers=form
    )

    assert on_peer.json()["mode"] == "fail"
    assert on_control.json()["listening"] is False


async def test_every_sandbox_app_documents_itself(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Each server's OpenAPI document renders, with the fault body documented."""
    for base, path in (
        (sandbox.trip_url, "/_sandbox/faults"),
        (sandbox.notification_url, "/_sandbox/faults"),
        (sandbox.control_url, "/{peer}/faults"),
    ):
        response = await client.get(f"{base}/openapi.json")

        assert response.status_code == 200
        body = response.json()["paths"][path]["put"]["requestBody"]
        assert "mode" in body["content"]["application/json"]["schema"]["properties"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/trip/faults", {"mode": "broken"}),
        ("/trip/faults", {"mode": "fail", "status_code": 200}),
        ("/trip/faults", {"mode": "slow", "delay": 1}),
        ("/rider/faults", {"mode": "down"}),
        ("/trip/faults", "{not json"),
        ("/trip/faults", ""),
    ],
    ids=["mode", "status", "unknown-field", "peer", "not-json", "empty"],
)
async def test_control_rejects_bad_requests(
    sandbox: Sandbox, client: httpx.AsyncClient, path: str, body: dict[str, object] | str
) -> None:
    """Typos in a fault request are a 422, never a silent default."""
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = await client.put(f"{sandbox.control_url}{path}", content=content)

    assert response.status_code == 422
    assert sandbox.peer_status("trip")["fault"]["mode"] == "normal"


async def test_control_reset_restores_everything(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """POST /reset brings down peers back, clears faults, runtime trips and deliveries."""
    await client.post(f"{sandbox.notification_url}/v1/notifications", json={})
    await client.put(_trip(sandbox, 5200), json={"status": "COMPLETED"})
    await sandbox.down("trip")
    await sandbox.set_fault("notification", "fail")

    status = (await client.post(f"{sandbox.control_url}/reset")).json()

    assert status["trip"]["listening"] is True
    assert status["notification"]["fault"]["mode"] == "normal"
    assert (await client.get(_trip(sandbox, 5200))).status_code == 404
    assert sandbox.notifications.notifications == []


def test_switch_parameters_fall_back_to_start_defaults() -> None:
    """Omitted parameters take the start-up defaults, not whatever was set last."""
    switch = FaultSwitch(delay_seconds=0.5, status_code=502, count=3)
    switch.set("fail", status_code=418)

    state = switch.set(FaultMode.FLAKY)

    assert state["status_code"] == 502
    assert state["remaining_failures"] == 3
    assert switch.set("slow")["delay_seconds"] == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"status_code": 200}, {"delay_seconds": -1}, {"count": 0}],
    ids=["status", "delay", "count"],
)
def test_switch_rejects_impossible_parameters(kwargs: dict[str, float]) -> None:
    """A non-error status, a negative delay or a zero flaky count is refused."""
    with pytest.raises(ValueError):
        FaultSwitch().set("flaky", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultSwitch().set("no-such-mode")
