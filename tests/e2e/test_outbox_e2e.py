"""`payment-service worker` as a real process: delivers the outbox, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from payment_sandbox import Sandbox, SandboxConfig, build_sandbox
from payment_service.db import create_engine, create_session_factory
from payment_service.models import OutboxMessage
from payment_service.repositories.outbox import OutboxRepository
from tests.conftest import insert_payment, make_settings

CLI = Path(sys.executable).with_name("payment-service")
WAIT_SECONDS = 15.0
SIGNING_SECRET = "whsec_" + base64.b64encode(b"worker-e2e-signing-secret-0001").decode()


@pytest.fixture
async def notification_peer() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(
        trip_port=0,
        notification_port=0,
        processor_port=0,
        control_port=0,
        trips_file=None,
        notification_signing_secret=SIGNING_SECRET,
        log_level=None,
    )
    async with build_sandbox(config) as sandbox:
        yield sandbox


@pytest.mark.skipif(not CLI.exists(), reason="payment-service console script not installed")
async def test_worker_command_delivers_and_stops_on_sigterm(
    notification_peer: Sandbox, database_url: str, empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """The worker delivers what is due, signed with NOTIFICATION_SIGNING_SECRET (the sink
    verifies), then exits 0 on SIGTERM with the outbox marked."""
    settings = make_settings(database_url)
    engine = create_engine(settings, make_url(database_url))
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            for _ in range(3):
                payment_id = await insert_payment(session)
                await OutboxRepository(session).enqueue(
                    "payment", payment_id, {"type": "payment", "amount": Decimal("10.50")}
                )
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DB_", "OUTBOX_", "NOTIFICATION_"))
        }
        env.update(
            DATABASE_URL=database_url,
            NOTIFICATION_SERVICE_URL=notification_peer.notification_url,
            NOTIFICATION_SIGNING_SECRET=SIGNING_SECRET,
            OUTBOX_POLL_INTERVAL_SECONDS="0.05",
            LOG_LEVEL="INFO",
            GATEWAY="simulator",
        )
        process = await asyncio.create_subprocess_exec(
            str(CLI),
            "worker",
            cwd=tmp_path,  # no developer .env
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while len(notification_peer.notifications.notifications) < 3:
                assert process.returncode is None, "the worker exited early"
                assert asyncio.get_running_loop().time() < deadline, "no deliveries in time"
                await asyncio.sleep(0.05)

            async def all_delivered() -> bool:
                async with sessions() as session:
                    statuses = (await session.execute(select(OutboxMessage.status))).scalars()
                    return set(statuses) == {"DELIVERED"}

            while not await all_delivered():
                assert asyncio.get_running_loop().time() < deadline, "rows not marked in time"
                await asyncio.sleep(0.05)

            process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await engine.dispose()

    assert process.returncode == 0, stderr.decode()
    messages = [json.loads(line)["message"] for line in stdout.decode().splitlines() if line]
    assert "outbox dispatcher started" in messages
    assert "outbox dispatcher stopped" in messages
    bodies = [entry["body"] for entry in notification_peer.notifications.notifications]
    assert all(body["amount"] == Decimal("10.50") for body in bodies)
    assert notification_peer.notifications.duplicates == 0
    assert notification_peer.notifications.bad_signatures == 0
    for entry in notification_peer.notifications.notifications:
        headers = {name: value for name, value in entry["headers"].items() if value is not None}
        verified = Webhook(SIGNING_SECRET).verify(entry["raw_body"], headers)
        assert verified["event_id"] == headers["webhook-id"] == headers["idempotency-key"]
    assert SIGNING_SECRET not in stdout.decode() + stderr.decode()  # never logged
