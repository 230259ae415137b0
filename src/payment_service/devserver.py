"""`payment-service dev`: the API and the sandbox peers in one process, stopped together.

Ctrl-C (or SIGTERM) stops the API, the sandbox servers, and then the CLI stops
the embedded PostgreSQL it started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from sqlalchemy import URL

from payment_service.settings import Settings
from payment_service.signals import stop_on_signals

log = logging.getLogger(__name__)

# Made up: the sandbox processor accepts exactly this key in `dev`.
DEV_STRIPE_API_KEY = "sk_test_sandbox_dev"


class DevServerError(RuntimeError):
    """The dev environment could not start."""


class _HostedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the dev runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_dev(
    settings: Settings,
    url: URL,
    *,
    port: int = 8082,
    trips_file: Path | None = None,
    peer_ports: tuple[int, int, int] = (8081, 8084, 8085),
    processor_port: int = 8087,
) -> None:
    from payment_sandbox.runner import SandboxConfig, build_sandbox, default_trips_file
    from payment_service.app import create_app
    from payment_service.cli import uvicorn_edge_options

    host = "127.0.0.1" if settings.service_host == "0.0.0.0" else settings.service_host
    webhook_secret = f"whsec_{secrets.token_hex(16)}"  # fresh per run, shared with the API
    # Fresh per run too: the API signs notifications with it, the sandbox sink verifies them.
    signing_secret = f"whsec_{base64.b64encode(secrets.token_bytes(24)).decode()}"
    sandbox = build_sandbox(
        SandboxConfig(
            trip_port=peer_ports[0],
            notification_port=peer_ports[1],
            control_port=peer_ports[2],
            processor_port=processor_port,
            processor_api_key=DEV_STRIPE_API_KEY,
            processor_webhook_url=f"http://{host}:{port}/v1/gateway/webhooks/stripe",
            processor_webhook_secret=webhook_secret,
            notification_signing_secret=signing_secret,
            trips_file=trips_file or default_trips_file(),
            log_level=None,
        )
    )
    async with stop_on_signals() as stop, sandbox:
        app_settings = settings.model_copy(
            update={
                "database_url": SecretStr(url.render_as_string(hide_password=False)),
                "trip_service_url": sandbox.trip_url,
                "notification_service_url": sandbox.notification_url,
                "gateway": "stripe",
                # The stripe adapter talks to the sandbox processor, whatever `.env` says.
                "stripe_api_base": sandbox.processor_url,
                "stripe_api_key": SecretStr(DEV_STRIPE_API_KEY),
                "stripe_webhook_secret": SecretStr(webhook_secret),
                "notification_signing_secret": SecretStr(signing_secret),
            }
        )
        server = _HostedServer(
            uvicorn.Config(
                create_app(app_settings),
                host=host,
                port=port,
                log_config=None,
                access_log=settings.access_log,
                **uvicorn_edge_options(settings),
                proxy_headers=settings.forwarded_allow_ips is not None,
                forwarded_allow_ips=settings.forwarded_allow_ips or "",
            )
        )
        api = asyncio.create_task(server.serve())
        log.info(
            "dev environment ready",
            extra={
                "api": f"http://{host}:{port}",
                "trip_service": sandbox.trip_url,
                "notification_service": sandbox.notification_url,
                "sandbox_control": sandbox.control_url,
                "sandbox_processor": sandbox.processor_url,
            },
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({api, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        server.should_exit = True
        with contextlib.suppress(SystemExit):
            await api
        if not server.started:
            raise DevServerError(f"the API could not start on port {port}; see the log above")
    log.info("dev environment stopped")
