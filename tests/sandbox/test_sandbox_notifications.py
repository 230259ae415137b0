"""The sandbox Notification service: recording, listing, clearing and duplicate detection."""

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from payment_sandbox import NotificationSink, Sandbox


def _notifications_url(sandbox: Sandbox) -> str:
    return f"{sandbox.notification_url}/v1/notifications"


async def test_delivery_is_recorded_listed_and_cleared(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A POST is answered 202, listed with its headers and time, and gone after DELETE."""
    body = {"type": "payment", "payment_id": 7, "amount": 99.01, "status": "SUCCESS"}

    accepted = await client.post(
        _notifications_url(sandbox),
        json=body,
        headers={"Idempotency-Key": "outbox-1", "X-Request-ID": "req-9"},
    )
    listed = await client.get(_notifications_url(sandbox))
    cleared = await client.delete(_notifications_url(sandbox))
    after = await client.get(_notifications_url(sandbox))

    assert accepted.status_code == 202
    assert accepted.json() == {"status": "accepted"}
    answer = listed.json()
    assert answer["count"] == 1
    assert answer["concurrent_duplicates"] == 0
    [record] = answer["notifications"]
    assert record["body"] == body
    assert record["headers"] == {
        "idempotency-key": "outbox-1",
        "x-request-id": "req-9",
        "webhook-id": None,
        "webhook-timestamp": None,
        "webhook-signature": None,
        "traceparent": None,
    }
    assert answer["bad_signatures"] == 0
    assert datetime.fromisoformat(record["received_at"]).tzinfo is not None
    assert '"amount":99.01' in listed.text
    assert cleared.json() == {"cleared": 1}
    assert after.json()["count"] == 0


async def test_missing_headers_are_recorded_as_null(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Headers the sender left out are null, so a test can assert they were forwarded."""
    await client.post(_notifications_url(sandbox), json={"type": "refund"})

    [record] = sandbox.notifications.notifications

    assert set(record["headers"].values()) == {None}
    assert sandbox.notifications.matching(type="refund") == [{"type": "refund"}]


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b'"text"'])
async def test_body_must_be_a_json_object(
    sandbox: Sandbox, client: httpx.AsyncClient, content: bytes
) -> None:
    """Anything but a JSON object is a 422 and is not recorded."""
    response = await client.post(
        _notifications_url(sandbox), content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert sandbox.notifications.notifications == []


async def test_overlapping_deliveries_of_one_key_are_counted(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A second request for a key still being processed counts as a concurrent duplicate."""
    await sandbox.set_fault("notification", "slow")
    headers = {"Idempotency-Key": "outbox-42"}

    await asyncio.gather(
        client.post(_notifications_url(sandbox), json={"n": 1}, headers=headers),
        client.post(_notifications_url(sandbox), json={"n": 2}, headers=headers),
    )
    answer = (await client.get(_notifications_url(sandbox))).json()

    assert answer["concurrent_duplicates"] == 1
    assert answer["duplicates"] == 1
    assert answer["count"] == 2


async def test_overlapping_deliveries_of_different_keys_are_fine(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Concurrency across keys is normal; message_id identifies a message without a header."""
    await sandbox.set_fault("notification", "slow")

    await asyncio.gather(
        client.post(_notifications_url(sandbox), json={"message_id": 1}),
        client.post(_notifications_url(sandbox), json={"message_id": 2}),
        client.post(_notifications_url(sandbox), json={"no": "key"}),
        client.post(_notifications_url(sandbox), json={"no": "key"}),
    )

    assert sandbox.notifications.concurrent_duplicates == 0
    assert sandbox.notifications.duplicates == 0
    assert len(sandbox.notifications.notifications) == 4


async def test_message_id_identifies_overlaps_without_a_header(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Without Idempotency-Key the body's message_id is the key."""
    await sandbox.set_fault("notification", "slow")

    await asyncio.gather(
        client.post(_notifications_url(sandbox), json={"message_id": 5}),
        client.post(_notifications_url(sandbox), json={"message_id": 5}),
    )

    assert sandbox.notifications.concurrent_duplicates == 1


async def test_sequential_redelivery_is_a_duplicate_but_not_concurrent(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """At-least-once redelivery after a first answer is told apart from an overlap."""
    for _ in range(2):
        await client.post(
            _notifications_url(sandbox), json={"n": 1}, headers={"Idempotency-Key": "again"}
        )

    answer = (await client.get(_notifications_url(sandbox))).json()

    assert answer["duplicates"] == 1
    assert answer["concurrent_duplicates"] == 0


def test_jsonl_file_mirrors_the_list(tmp_path: Path) -> None:
    """With a path, deliveries survive a restart with exact amounts, and clear empties the file."""
    path = tmp_path / "notifications.jsonl"
    sink = NotificationSink(path)
    sink.record({"amount": Decimal("12.50")}, {"idempotency-key": "k", "x-request-id": None})

    reloaded = NotificationSink(path)

    assert '"amount":12.50' in path.read_text(encoding="utf-8")
    assert reloaded.notifications == sink.notifications
    reloaded.record({"amount": Decimal("1")}, {"idempotency-key": "k"})
    assert reloaded.duplicates == 1
    assert reloaded.clear() == 2
    assert path.read_text(encoding="utf-8") == ""


def test_corrupt_jsonl_file_names_the_line(tmp_path: Path) -> None:
    """A damaged persistence file is reported with its line, not half loaded."""
    path = tmp_path / "notifications.jsonl"
    path.write_text('{"body": {}}\n{oops\n', encoding="utf-8")

    with pytest.raises(ValueError, match=r"notifications.jsonl:2"):
        NotificationSink(path)


# -- Standard Webhooks signatures ---------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"sandbox-test-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-abcdefghijk").decode()


def _signed(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    """Headers a Standard Webhooks sender would send, signed with `secret`."""
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


@pytest.fixture
def verifying(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The sandbox's sink verifying signatures with SECRET, for one test."""
    sandbox.notifications.use_secret(SECRET)
    yield sandbox
    sandbox.notifications.use_secret(None)


async def test_a_correctly_signed_delivery_is_accepted(
    verifying: Sandbox, client: httpx.AsyncClient
) -> None:
    """With a secret, a delivery signed with it is recorded and nothing counts as bad."""
    body = b'{"type":"payment","payment_id":1}'
    response = await client.post(
        _notifications_url(verifying), content=body, headers=_signed(SECRET, "evt-1", body)
    )

    assert response.status_code == 202
    stats = (await client.get(_notifications_url(verifying))).json()
    assert (stats["count"], stats["bad_signatures"], stats["signatures_checked"]) == (1, 0, 1)
    assert stats["notifications"][0]["headers"]["webhook-id"] == "evt-1"


@pytest.mark.parametrize("how", ["other secret", "unsigned", "body changed"])
async def test_a_badly_signed_delivery_is_refused_and_counted(
    verifying: Sandbox, client: httpx.AsyncClient, how: str
) -> None:
    """Another secret, no signature or a tampered body: 401, not recorded, bad_signatures + 1."""
    body = b'{"type":"payment","payment_id":1}'
    headers = _signed(OTHER_SECRET if how == "other secret" else SECRET, "evt-2", body)
    if how == "unsigned":
        del headers["webhook-signature"]
    sent = body.replace(b"1}", b"2}") if how == "body changed" else body

    response = await client.post(_notifications_url(verifying), content=sent, headers=headers)

    assert response.status_code == 401
    stats = (await client.get(_notifications_url(verifying))).json()
    assert (stats["count"], stats["bad_signatures"]) == (0, 1)


async def test_redeliveries_are_recognised_by_webhook_id(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """The same `webhook-id` twice is one duplicate, whatever the Idempotency-Key says."""
    for key in ("a", "b"):
        await client.post(
            _notifications_url(sandbox),
            json={"type": "payment"},
            headers={"webhook-id": "evt-3", "Idempotency-Key": key},
        )

    assert sandbox.notifications.duplicates == 1
